"""Actor configs (secrets included) and links/webhooks (cycle detection, delivery with retries)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lightabaco.sharing import configs, links
from lightabaco.automation import events
from lightabaco.store.models import Execution, Message
from lightabaco.store.sharing import ActorConfig, EventDelivery


def res(r):
    assert r.status_code == 200, r.text
    return r.json()["result"]


def test_configs_flow(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    a1 = sharing_client.create_actor("owner")
    a2 = sharing_client.create_actor("owner")
    made = res(c.post("/actors/configs", json={"name": "the_config", "value": "v1", "actors": f"{a1}, {a2}",
                                               "is_secret": False}, headers=h("owner")))
    assert made == {"name": "the_config", "value": "v1", "is_secret": False, "actors": f"{a1}, {a2}"}
    r = c.post("/actors/configs", json={"name": "bad", "value": "v", "actors": "henry", "is_secret": False},
               headers=h("owner"))
    assert r.status_code == 404 and r.json()["message"] == "No actor or alias found with id: henry."
    r = c.post("/actors/configs", json={"name": "the_config", "value": "v", "actors": a1, "is_secret": False},
               headers=h("owner"))
    assert r.status_code == 400 and "already exists" in r.json()["message"]
    r = c.post("/actors/configs", json={"name": "no:colons", "value": "v", "actors": a1, "is_secret": False},
               headers=h("owner"))
    assert r.status_code == 400 and "forbidden character" in r.json()["message"]
    r = c.post("/actors/configs", json={"name": "x", "value": "v", "actors": a1}, headers=h("owner"))
    assert r.status_code == 400 and "is_secret" in r.json()["message"]
    # regular users may create configs naming their own actors (not someone else's: that needs UPDATE on
    # it, unlike Abaco), but not change others' configs
    r = c.post("/actors/configs", data={"name": "theirs", "value": "v", "actors": a1, "is_secret": "false"},
               headers=h("regular"))
    assert r.status_code == 400 and "you need UPDATE on actor" in r.json()["message"]
    own = sharing_client.create_actor("regular")
    res(c.post("/actors/configs", data={"name": "theirs", "value": "v", "actors": own, "is_secret": "false"},
               headers=h("regular")))
    r = c.put("/actors/configs/the_config", json={"value": "v2", "actors": a1, "is_secret": True},
              headers=h("regular"))
    assert r.status_code == 400 and r.json()["message"] == "You do not have sufficient access to this actor config."
    assert c.get("/actors/configs/the_config", headers=h("regular")).status_code == 400
    assert [x["name"] for x in res(c.get("/actors/configs", headers=h("regular")))] == ["theirs"]
    put = res(c.put("/actors/configs/the_config", json={"value": "s3cret", "actors": a1, "is_secret": True},
                    headers=h("owner")))
    assert put["is_secret"] is True and put["value"] != "s3cret"
    assert res(c.get("/actors/configs/the_config", headers=h("owner")))["value"] != "s3cret"
    res(c.post("/actors/configs/the_config/permissions", data={"user": "regular", "level": "READ"},
               headers=h("owner")))
    assert res(c.get("/actors/configs/the_config", headers=h("regular")))["value"] != "s3cret"
    assert c.get("/actors/configs/nope", headers=h("owner")).status_code == 404


def test_secret_is_encrypted_at_rest_and_delivered_decrypted(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner)
    from lightabaco.sharing import aliases

    aliases.create_alias(sharing_env.services, sharing_env.owner, {"alias": "bob", "actor_id": actor.id})
    configs.create_config(sharing_env.services, sharing_env.owner,
                          {"name": "db_password", "value": "hunter2", "is_secret": True, "actors": "bob"})
    configs.create_config(sharing_env.services, sharing_env.owner,
                          {"name": "plain", "value": "p", "is_secret": "false", "actors": actor.id})
    stored = ActorConfig.get(ActorConfig.name == "db_password").value
    assert "hunter2" not in stored
    assert configs.actor_configs_for(sharing_env.services, "DEV", actor.id) == {"db_password": "hunter2",
                                                                                "plain": "p"}
    assert configs.actor_configs_for(sharing_env.services, "DEV", "someoneelse") == {}


def test_has_cycles_like_abacos_unit_tests():
    assert not links.has_cycles({"A": "B", "B": "C", "C": "D"})
    assert links.has_cycles({"A": "B", "B": "A"})
    assert links.has_cycles({"A": "B", "B": "C", "C": "D", "D": "E", "E": "B"})
    assert not links.has_cycles({"A": "J", "B": "J", "C": "J", "D": "A", "E": "B"})
    assert links.has_cycles({"A": "B", "C": "C"})


def test_links_refuse_self_cycles_and_unknown_targets(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    chain = [sharing_client.create_actor("owner")]
    for _ in range(5):
        chain.append(sharing_client.create_actor("owner", link=chain[-1]))
    r = c.put(f"/actors/{chain[0]}", json={"image": "abacosamples/test", "link": chain[-1]}, headers=h("owner"))
    assert r.status_code == 400 and "this update would result in a cycle of linked actors" in r.json()["message"]
    r = c.put(f"/actors/{chain[0]}", json={"image": "abacosamples/test", "link": chain[0]}, headers=h("owner"))
    assert r.status_code == 400 and "An actor cannot link to itself" in r.json()["message"]
    r = c.post("/actors", json={"image": "abacosamples/test", "link": "nosuchalias"}, headers=h("owner"))
    assert r.status_code == 400 and "unable to retrieve linked actor data" in r.json()["message"]
    # linking needs EXECUTE on the target
    r = c.post("/actors", json={"image": "abacosamples/test", "link": chain[0]}, headers=h("regular"))
    assert r.status_code == 400
    res(c.post(f"/actors/{chain[0]}/permissions", data={"user": "regular", "level": "EXECUTE"}, headers=h("owner")))
    res(c.post("/actors", json={"image": "abacosamples/test", "link": chain[0]}, headers=h("regular")))


def test_link_event_becomes_a_message_on_the_target(sharing_env):
    target = sharing_env.make_actor(sharing_env.owner, stateless=False)
    source = sharing_env.make_actor(sharing_env.owner, link=target.id)
    events.emit(sharing_env.services, source, events.ACTOR_READY)
    events.emit(sharing_env.services, source, events.EXECUTION_COMPLETE, execution_id="E1", status="COMPLETE",
                exit_code=0)
    runs = list(Execution.select().where(Execution.actor_dbid == target.dbid).order_by(Execution.seq))
    assert [r.executor for r in runs] == ["Abaco Event", "Abaco Event"]
    bodies = [json.loads(bytes(Message.get(Message.execution_id == r.id).body)) for r in runs]
    assert [b["event_type"] for b in bodies] == ["ACTOR_READY", "EXECUTION_COMPLETE"]
    assert bodies[0]["actor_id"] == source.id and bodies[0]["_abaco_link"] == target.dbid
    assert {"event_time_utc", "event_time_display", "status_message", "tenant_id"} <= set(bodies[0])
    assert bodies[1]["execution_id"] == "E1" and bodies[1]["exit_code"] == 0
    env = Message.get(Message.execution_id == runs[0].id).env
    assert env["_abaco_username"] == "Abaco Event" and env["_abaco_Content_Type"] == "application/json"
    # no link, no webhook: nothing happens
    quiet = sharing_env.make_actor(sharing_env.owner)
    events.emit(sharing_env.services, quiet, events.ACTOR_READY)
    assert EventDelivery.select().count() == 0


class _Receiver(BaseHTTPRequestHandler):
    fail_first = 0
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_background_delivery(monkeypatch):
    """deliver_due() is driven by the tests' own clock here; no thread may race it."""
    monkeypatch.setattr(events, "AUTO_START", False)


@pytest.fixture
def receiver(sharing_env):
    _Receiver.received = []
    _Receiver.fail_first = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    # The receiver is on loopback, which webhooks may reach only when the operator names it.
    sharing_env.services.settings.webhook_allowed_hosts = f"127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_webhook_is_retried_with_backoff_then_delivered(sharing_env, receiver):
    url = f"http://127.0.0.1:{receiver.server_port}/hook"
    actor = sharing_env.make_actor(sharing_env.owner, webhook=url)
    _Receiver.fail_first = 2
    events.emit(sharing_env.services, actor, events.ACTOR_READY)
    row = EventDelivery.get()
    t0 = row.next_attempt
    assert events.deliver_due(sharing_env.services, now=t0) == 0
    row = EventDelivery.get()
    assert row.attempts == 1 and row.next_attempt == t0 + 2 and row.status == "pending"
    assert events.deliver_due(sharing_env.services, now=t0 + 1) == 0  # not due yet: nothing sent
    assert events.deliver_due(sharing_env.services, now=t0 + 2) == 0
    assert EventDelivery.get().next_attempt == t0 + 2 + 4
    assert events.deliver_due(sharing_env.services, now=t0 + 6) == 1
    assert EventDelivery.select().count() == 0
    [event] = _Receiver.received
    assert event["event_type"] == "ACTOR_READY" and event["_abaco_username"] == "Abaco Event"
    assert event["_abaco_webhook"] == url


def test_webhook_gives_up_after_max_attempts(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner, webhook="http://127.0.0.1:9/unreachable")
    events.emit(sharing_env.services, actor, events.EXECUTION_COMPLETE, execution_id="x", status="COMPLETE",
                exit_code=0)
    calls = []

    def failing(url, payload):
        calls.append(url)
        raise OSError("connection refused")

    now = EventDelivery.get().next_attempt
    for _ in range(events.MAX_ATTEMPTS + 2):
        events.deliver_due(sharing_env.services, now=now, sender=failing)
        now += events.MAX_BACKOFF_S
    row = EventDelivery.get()
    assert row.status == "failed" and row.attempts == events.MAX_ATTEMPTS and len(calls) == events.MAX_ATTEMPTS
    assert "connection refused" in row.last_error


def test_delivery_thread_sends_soon_after_emit(sharing_env, receiver):
    url = f"http://127.0.0.1:{receiver.server_port}/hook"
    actor = sharing_env.make_actor(sharing_env.owner, webhook=url)
    thread = events.start_delivery(sharing_env.services)
    try:
        events.emit(sharing_env.services, actor, events.ACTOR_READY)
        for _ in range(100):
            if _Receiver.received:
                break
            threading.Event().wait(0.05)
    finally:
        thread.stop()
    assert [e["event_type"] for e in _Receiver.received] == ["ACTOR_READY"]


def test_webhook_with_a_non_http_url_fails_at_once(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner, webhook="ftp://example.invalid/x")
    events.emit(sharing_env.services, actor, events.ACTOR_READY)
    events.deliver_due(sharing_env.services, now=EventDelivery.get().next_attempt)
    row = EventDelivery.get()
    assert row.status == "failed" and row.attempts == 1 and "http://" in row.last_error
