"""The HTTP edge in-process (Starlette TestClient): envelope, routing, parsing, case modes."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from lightabaco.http.app import create_app
from lightabaco.store.models import Execution, Message


@pytest.fixture
def client(service_env):
    with TestClient(create_app(service_env.services)) as c:
        yield c


def new_actor(client, **fields) -> str:
    r = client.post("/actors", json={"image": "abacosamples/test", **fields})
    assert r.status_code == 200, r.text
    return r.json()["result"]["id"]


def test_envelope_has_exact_json_content_type(client):
    r = client.get("/actors")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == {"result": [], "status": "success", "version": r.json()["version"],
                        "message": "Actors retrieved successfully.", "metadata": {}}


def test_not_found_and_method_not_allowed(client):
    r = client.get("/nothing/here")
    assert r.status_code == 404 and r.json()["status"] == "error"
    assert r.headers["content-type"] == "application/json"
    r = client.put("/actors")
    assert r.status_code == 405 and r.json()["message"] == "Invalid HTTP method on requested resource."


def test_prefixes_slashes_and_cors(client):
    aid = new_actor(client)
    for path in (f"/actors/v2/{aid}", f"/v3/actors/{aid}", f"/actors///{aid}/", f"/v3//actors/{aid}"):
        assert client.get(path).json()["result"]["id"] == aid, path
    r = client.options("/actors", headers={"Origin": "http://x.org", "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "X-Requested-With"})
    assert r.status_code == 200 and "access-control-allow-methods" in r.headers
    assert "x-requested-with" in r.headers["access-control-allow-headers"].lower()
    assert client.get("/actors", headers={"Origin": "http://x.org"}).headers[
        "access-control-allow-origin"] in ("*", "http://x.org")


def test_form_repeated_keys_and_query_fields(client):
    r = client.post("/actors?name=from-query", data={"image": "img", "hints": ["sync", "test"]})
    body = r.json()["result"]
    assert body["hints"] == ["sync", "test"] and body["name"] == "from-query"


def test_message_body_interpretation(client):
    aid = new_actor(client)
    post = lambda **kw: client.post(f"/actors/{aid}/messages", **kw)  # noqa: E731
    assert post(data={"message": "plain"}).json()["result"]["msg"] == "plain"
    assert post(json={"message": {"a": 1}}).json()["result"]["msg"] == "{'a': 1}"
    assert post(json={"a": 1}).json()["result"]["msg"] == {"a": 1}
    assert post(content=b"42", headers={"Content-Type": "text/plain"}).json()["result"]["msg"] == 42
    r = post(content=b"\x00\x01", headers={"Content-Type": "application/octet-stream"})
    assert r.json()["result"]["msg"] == "binary - omitted"
    r = post(params={"message": "q", "ENV1": "v"})
    assert r.json()["result"]["msg"] == "q"
    types = [m.content_type for m in Message.select().order_by(Message.id)]
    assert types == ["str", "str", "application/json", "str", "application/octet-stream", "str"]
    assert Message.select().order_by(Message.id.desc()).first().env["ENV1"] == "v"
    r = post(content=b"not json", headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "could not be serialized" in r.json()["message"]
    # A binary body sent without its header: the answer says which header to send (issue 10).
    r = post(content=b"\x89PNG\r\n\x1a\n\x00\x00")
    assert r.status_code == 400 and "Content-Type: application/octet-stream" in r.json()["message"]
    assert "--data-binary" in r.json()["message"]
    r = post(content=b"{bad", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]


def test_body_limits(client, service_env):
    service_env.services.settings.max_body_bytes = 1000
    aid = new_actor(client)
    r = client.post(f"/actors/{aid}/messages", content=b"x" * 1001,
                    headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and r.json()["message"] == "Message exceeds max content length of: 1000"
    r = client.post("/actors", data={"image": "i", "description": "d" * 2000})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["message"]


def test_sync_deadline_answers_504(client, service_env):
    service_env.services.settings.sync_timeout_s = 0.2
    aid = new_actor(client)
    r = client.post(f"/actors/{aid}/messages?_abaco_synchronous=true", data={"message": "x"})
    assert r.status_code == 504
    eid = r.json()["result"]["execution_id"]
    assert eid in r.json()["message"] and Execution.get(Execution.id == eid).status == "SUBMITTED"


def test_sync_returns_logs_when_execution_completes(client, service_env):
    aid = new_actor(client)
    service_env.services.settings.sync_timeout_s = 5

    import threading
    import time

    from lightabaco.store.models import Log

    def finish_soon() -> None:
        time.sleep(0.2)
        ex = Execution.select().order_by(Execution.seq.desc()).first()
        Log.insert(execution_dbid=ex.dbid, actor_dbid=ex.actor_dbid, text="the logs").execute()
        Execution.update(status="COMPLETE").where(Execution.dbid == ex.dbid).execute()

    threading.Thread(target=finish_soon).start()
    r = client.post(f"/actors/{aid}/messages?_abaco_synchronous=true", data={"message": "x"})
    assert r.status_code == 200 and r.text == "the logs"
    assert r.headers["content-type"].startswith("text/html")


def test_camel_mode(client, service_env):
    service_env.services.settings.case = "camel"
    r = client.post("/actors", json={"image": "img", "defaultEnvironment": {"a": "b"}, "logEx": 20})
    actor = r.json()["result"]
    assert actor["defaultEnvironment"] == {"a": "b"} and actor["logEx"] == 20
    assert "maxWorkers" not in actor and "max_workers" not in actor
    r = client.post(f"/actors/{actor['id']}/messages", data={"message": "x"})
    assert "executionId" in r.json()["result"]
