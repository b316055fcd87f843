"""End-to-end: the real server (uvicorn, SQLite on disk, bubblewrap) driven only through HTTP."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e


def envelope_ok(r, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert {"result", "status", "version", "message"} <= set(body)
    return body


def test_empty_list_envelope_and_cors(live_server):
    body = envelope_ok(live_server.get("/actors"))
    assert body["status"] == "success" and body["message"] == "Actors retrieved successfully."
    r = live_server.get("/actors", headers={"Origin": "http://example.com"})
    assert r.headers["access-control-allow-origin"] in ("*", "http://example.com")
    import requests

    r = requests.options(live_server.url + "/actors", headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-Requested-With"})
    assert r.status_code == 200
    for h in ("access-control-allow-origin", "access-control-allow-methods",
              "access-control-allow-headers"):
        assert h in r.headers


def test_unknown_path_and_wrong_method(live_server):
    r = live_server.get("/actors/x/y/z/w")
    assert r.status_code == 404 and r.json()["status"] == "error"
    assert r.headers["content-type"] == "application/json"
    r = live_server.put("/actors", data={"image": "abacosamples/test"})
    assert r.status_code == 405 and r.json()["status"] == "error"
    actor = live_server.register(wait_ready=False)
    for method, path in (("POST", f"/actors/{actor['id']}"), ("PUT", f"/actors/{actor['id']}/messages"),
                         ("PUT", f"/actors/{actor['id']}/executions"),
                         ("PUT", f"/actors/{actor['id']}/workers")):
        r = live_server.request(method, path)
        assert r.status_code == 405, (method, path, r.text)
        assert r.json()["message"] == "Invalid HTTP method on requested resource."


def test_register_execute_logs_and_summary(live_server):
    r = live_server.post("/actors", data={"image": "abacosamples/test", "name": "s1", "stateless": "False"})
    actor = envelope_ok(r)["result"]
    assert 10 <= len(actor["id"]) <= 14 and actor["id"].isalnum()
    assert actor["status"] == "SUBMITTED" and actor["revision"] == 1 and actor["stateless"] is False
    assert actor["description"] == "" and actor["default_environment"] == {} and actor["hints"] == []
    assert actor["token"] == "false" and actor["_links"]["self"].endswith(f"/actors/{actor['id']}")
    assert not {"tenant", "db_id", "api_server", "executions"} & set(actor)
    aid = actor["id"]
    live_server.wait_actor(aid, "READY")
    summary = envelope_ok(live_server.get(f"/actors/{aid}/executions"))["result"]
    assert summary["executions"] == [] and summary["total_executions"] == 0
    assert envelope_ok(live_server.get(f"/actors/{aid}/messages"))["result"]["messages"] == 0

    r = live_server.post(f"/actors/{aid}/messages?k2=override&extra=e", data={"message": "testing execution"})
    res = envelope_ok(r)["result"]
    eid = res["execution_id"]
    assert res["msg"] == "testing execution" and res["_links"]["self"].endswith(f"/executions/{eid}")
    ex = live_server.wait_execution(aid, eid)
    for key in ("worker_id", "exit_code", "final_state", "message_received_time", "start_time",
                "finish_time"):
        assert ex[key] not in (None, "None"), key
    assert ex["actor_id"] == aid and ex["exit_code"] == 0 and ex["final_state"]["ExitCode"] == 0
    assert all(isinstance(ex[k], int) for k in ("io", "cpu", "runtime"))
    logs = live_server.logs(aid, eid)
    for needle in ("Contents of MSG: testing execution", "PATH=", f"_abaco_actor_id={aid}",
                   "_abaco_actor_dbid=", "_abaco_api_server=", "_abaco_actor_state={}",
                   f"_abaco_execution_id={eid}", "_abaco_Content_Type=str", "_abaco_worker_id=",
                   "_abaco_container_repo=abacosamples/test", "_abaco_actor_name=s1",
                   "_abaco_username=", "k2=override", "extra=e"):
        assert needle in logs, needle
    summary = envelope_ok(live_server.get(f"/actors/{aid}/executions"))["result"]
    assert summary["total_executions"] == 1 and summary["executions"][0]["id"] == eid
    assert summary["executions"][0]["status"] == "COMPLETE"


def test_default_environment_and_json_message(live_server):
    # Overriding a default_environment key from a message needs the owner's allow-list (issue 8 item 2).
    actor = live_server.register(default_environment={"k1": "v1", "k2": "v2"}, message_env_allow=["k2"])
    aid = actor["id"]
    r = live_server.post(f"/actors/{aid}/messages?k2=override", json={"key1": "value1", "key2": "value2"})
    res = envelope_ok(r)["result"]
    assert res["msg"] == {"key1": "value1", "key2": "value2"}
    live_server.wait_execution(aid, res["execution_id"])
    logs = live_server.logs(aid, res["execution_id"])
    assert "Contents of MSG: {'key1': 'value1', 'key2': 'value2'}" in logs
    assert "_abaco_Content_Type=application/json" in logs
    assert "k1=v1" in logs and "k2=override" in logs


def test_binary_message_one_mebibyte(live_server):
    aid = live_server.register("lightabaco/binary")["id"]
    data = bytes(range(256)) * 4096
    r = live_server.post(f"/actors/{aid}/messages", data=data,
                         headers={"Content-Type": "application/octet-stream"})
    res = envelope_ok(r)["result"]
    assert res["msg"] == "binary - omitted"
    live_server.wait_execution(aid, res["execution_id"])
    logs = live_server.logs(aid, res["execution_id"])
    assert "bytes: 1048576" in logs and "MSG set: \n" in logs


def test_results_async_and_sync(live_server):
    aid = live_server.register("lightabaco/result")["id"]
    eid = live_server.send(aid, "x")
    live_server.wait_execution(aid, eid)
    first = live_server.get(f"/actors/{aid}/executions/{eid}/results")
    assert first.status_code == 200 and first.content == b"hello"
    assert first.headers["content-type"] == "application/octet-stream"
    second = live_server.get(f"/actors/{aid}/executions/{eid}/results")
    assert second.status_code == 200 and second.content == b""
    r = live_server.post(f"/actors/{aid}/messages?_abaco_synchronous=true", data={"message": "x"})
    assert r.status_code == 200 and r.content == b"hello"
    assert r.headers["content-type"] == "application/octet-stream"


def test_sync_message_returns_logs(live_server):
    aid = live_server.register()["id"]
    r = live_server.post(f"/actors/{aid}/messages", params={"_abaco_synchronous": "true"},
                         data={"message": "testing execution"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "Contents of MSG: testing execution" in r.text
    assert "_abaco_synchronous=true" in r.text


def test_sync_deadline_answers_504_and_queue_rule(live_server):
    # One worker only, so that the autoscaler cannot drain the queue this test fills.
    aid = live_server.register("lightabaco/sleep", max_workers=1)["id"]
    t0 = time.monotonic()
    r = live_server.post(f"/actors/{aid}/messages?_abaco_synchronous=true&ITERATIONS=60&SLEEP=0.2",
                         data={"message": "slow"})
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["status"] == "error" and body["result"]["execution_id"] in body["message"]
    assert time.monotonic() - t0 < 15
    slow_eid = body["result"]["execution_id"]
    # The worker is busy with the slow one: queue 4 more, then a sync request is refused.
    for _ in range(4):
        live_server.send(aid, "queued", params={"ITERATIONS": "0"})
    r = live_server.post(f"/actors/{aid}/messages?_abaco_synchronous=true", data={"message": "x"})
    assert r.status_code == 400
    assert r.json()["message"] == "Cannot issue synchronous execution when actor message queue > 0."
    assert live_server.delete(f"/actors/{aid}/executions/{slow_eid}").status_code == 200
    live_server.wait_execution(aid, slow_eid)


def test_force_quit_and_logs_while_running(live_server):
    aid = live_server.register("lightabaco/sleep")["id"]
    eid = live_server.send(aid, "long", params={"ITERATIONS": "999", "SLEEP": "0.1"})
    live_server.wait_execution(aid, eid, ("RUNNING",))
    deadline = time.monotonic() + 10
    while "sleeper start long" not in live_server.logs(aid, eid):
        assert time.monotonic() < deadline, "logs are not readable while RUNNING"
        time.sleep(0.1)
    r = live_server.delete(f"/actors/{aid}/executions/{eid}")
    assert envelope_ok(r)["message"] == f"Issued force quit command for execution {eid}."
    ex = live_server.wait_execution(aid, eid, timeout=20)
    assert ex["status"] == "COMPLETE" and ex["exit_code"] != 0
    # The worker survives a force quit and runs the next message.
    nxt = live_server.send(aid, "after", params={"ITERATIONS": "0"})
    live_server.wait_execution(aid, nxt)
    r = live_server.delete(f"/actors/{aid}/executions/{eid}")
    assert r.status_code == 400
    assert r.json()["message"] == ("Cannot force quit an execution not in RUNNING status. Execution "
                                   "was found in status: COMPLETE")


def test_exit_code_and_max_run_time(live_server):
    aid = live_server.register("lightabaco/exit3")["id"]
    ex = live_server.wait_execution(aid, live_server.send(aid))
    assert ex["status"] == "COMPLETE" and ex["exit_code"] == 3 and ex["final_state"]["ExitCode"] == 3
    aid = live_server.register("lightabaco/sleep", max_run_time=1)["id"]
    eid = live_server.send(aid, "x", params={"ITERATIONS": "10", "SLEEP": "1"})
    ex = live_server.wait_execution(aid, eid, timeout=15)
    assert ex["status"] == "COMPLETE" and ex["runtime"] <= 3


def test_put_new_image_bumps_revision(live_server):
    actor = live_server.register(stateless=False, name="upd")
    aid = actor["id"]
    r = live_server.put(f"/actors/{aid}", data={"image": "abacosamples/test"})
    assert r.status_code == 400
    assert "an actor that was not stateless cannot be updated to be stateless" in r.json()["message"]
    r = live_server.put(f"/actors/{aid}", data={"image": "lightabaco/test2", "stateless": "False"})
    updated = envelope_ok(r)["result"]
    assert updated["image"] == "lightabaco/test2" and updated["revision"] == 2
    assert updated["status"] == "SUBMITTED" and updated["name"] == "upd"
    assert updated["owner"] == actor["owner"]
    assert updated["last_update_time"] != actor["last_update_time"] or True
    live_server.wait_actor(aid, "READY")
    eid = live_server.send(aid)
    live_server.wait_execution(aid, eid)
    assert "_abaco_container_repo=lightabaco/test2" in live_server.logs(aid, eid)
    # Same image, no force: status and revision stay.
    r = live_server.put(f"/actors/{aid}", data={"image": "lightabaco/test2", "stateless": "False"})
    assert envelope_ok(r)["result"]["revision"] == 2


def test_state_endpoints(live_server):
    stateful = live_server.register(stateless=False, wait_ready=False)["id"]
    stateless = live_server.register(wait_ready=False)["id"]
    r = live_server.post(f"/actors/{stateful}/state", json="abc")
    assert envelope_ok(r)["result"]["state"] == "abc"
    live_server.post(f"/actors/{stateful}/state", json={"foo": "abc", "bar": 1, "baz": True})
    assert live_server.get(f"/actors/{stateful}/state").json()["result"] == {
        "state": {"foo": "abc", "bar": 1, "baz": True}}
    r = live_server.post(f"/actors/{stateless}/state", data={"state": "abc"})
    assert r.status_code == 404 and r.json()["message"] == "actor is stateless."
    r = live_server.post(f"/actors/{stateful}/state", json={})
    assert r.status_code == 400
    assert r.json()["message"] == "Invalid actor state description: state must be JSON serializable."
    r = live_server.post("/actors", json={"image": "x", "stateless": False, "max_workers": 3})
    assert r.status_code == 400 and "stateful actors can only have 1 worker" in r.json()["message"]


def test_bad_inputs(live_server):
    cases = [({"data": {}}, "image"), ({"json": {"image": "x", "stateless": "abcd"}}, "stateless"),
             ({"json": {"image": "x", "default_environment": "abcd"}}, "default_environment"),
             ({"json": {"image": "x", "use_container_uid": "abcd"}}, "use_container_uid"),
             ({"json": {"image": "x", "max_workers": "many"}}, "max_workers"),
             ({"json": {"image": "x", "hints": ["a{b"]}}, "Error character: {")]
    for kwargs, needle in cases:
        r = live_server.post("/actors", **kwargs)
        assert r.status_code == 400, (kwargs, r.text)
        assert needle in r.json()["message"] and r.json()["status"] == "error"
    r = live_server.post("/actors", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
    r = live_server.post("/actors", data={"image": "x", "description": "d" * 2_100_000})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["message"]
    aid = live_server.register(wait_ready=False)["id"]
    r = live_server.post(f"/actors/{aid}/messages")
    assert r.status_code == 400
    assert r.json()["message"] == ("message POST body could not be serialized. Pass JSON data or use the "
                                   "message attribute.")
    r = live_server.post(f"/actors/{aid}/messages", data=b"x" * 2_100_000,
                         headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400 and r.json()["message"].startswith("Message exceeds max content length")
    r = live_server.get("/actors/bad_actor_id")
    assert r.status_code == 404 and r.json()["status"] == "error"
    r = live_server.get(f"/actors/{aid}/executions/nosuchexec")
    assert r.status_code == 404 and "No executions found" in r.json()["message"]
    r = live_server.get(f"/actors/{aid}/workers/nosuchworker")
    assert r.status_code == 404 and r.json()["message"] == "Worker not found."


def test_image_error_then_force_recovers(live_server):
    actor = live_server.register("127.0.0.1:9/no/such-image", wait_ready=False)
    aid = actor["id"]
    errored = live_server.wait_actor(aid, "ERROR")
    assert "no/such-image" in errored["status_message"]
    eid = live_server.send(aid, "queued while broken")
    assert live_server.get(f"/actors/{aid}/messages").json()["result"]["messages"] == 1
    r = live_server.put(f"/actors/{aid}", data={"image": "abacosamples/test", "force": "true"})
    assert envelope_ok(r)["result"]["status"] == "SUBMITTED"
    live_server.wait_actor(aid, "READY")
    live_server.wait_execution(aid, eid)
    assert "queued while broken" in live_server.logs(aid, eid)


def test_workers_messages_purge_and_delete(live_server):
    aid = live_server.register("lightabaco/sleep")["id"]
    workers = envelope_ok(live_server.get(f"/actors/{aid}/workers"))["result"]
    assert len(workers) == 1
    w = workers[0]
    assert w["status"] in ("READY", "BUSY") and w["image"] == "lightabaco/sleep"
    for key in ("location", "cid", "tenant", "ch_name"):
        assert w[key], key
    for key in ("last_execution_time", "last_health_check_time", "create_time"):
        assert key in w
    r = live_server.post(f"/actors/{aid}/workers", data={"num": 2})
    assert envelope_ok(r)["message"].startswith("Scheduled 1 new worker(s)")
    deadline = time.monotonic() + 20
    while len([x for x in live_server.get(f"/actors/{aid}/workers").json()["result"]
               if x["status"] == "READY"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = live_server.delete(f"/actors/{aid}/workers/{w['id']}")
    assert envelope_ok(r)["message"] == "Worker scheduled to be stopped."
    deadline = time.monotonic() + 10
    while w["id"] in [x["id"] for x in live_server.get(f"/actors/{aid}/workers").json()["result"]]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # Purge: keep the remaining worker busy, queue two, purge them.
    busy = live_server.send(aid, "busy", params={"ITERATIONS": "100", "SLEEP": "0.1"})
    live_server.wait_execution(aid, busy, ("RUNNING",))
    deadline = time.monotonic() + 10
    while [x for x in live_server.get(f"/actors/{aid}/workers").json()["result"] if x["status"] == "READY"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    queued = [live_server.send(aid, "q", params={"ITERATIONS": "0"}) for _ in range(2)]
    r = live_server.delete(f"/actors/{aid}/messages")
    assert envelope_ok(r)["result"]["msg"] == "Actor mailbox purged."
    assert live_server.get(f"/actors/{aid}/messages").json()["result"]["messages"] == 0
    statuses = {live_server.get(f"/actors/{aid}/executions/{e}").json()["result"]["status"] for e in queued}
    assert statuses <= {"ERROR", "COMPLETE", "RUNNING"}
    # Delete the actor while it runs: 200, then 404; the running execution is stopped.
    r = live_server.delete(f"/actors/{aid}")
    body = envelope_ok(r)
    assert body["result"] is None and body["message"].startswith("Actor deleted successfully")
    assert live_server.get(f"/actors/{aid}").status_code == 404


def test_prefixes_and_repeated_slashes(live_server):
    aid = live_server.register(wait_ready=False)["id"]
    for path in (f"/v3/actors/{aid}", f"/actors/v2/{aid}", f"/actors//{aid}", f"/v3/actors/{aid}/"):
        r = live_server.get(path)
        assert r.status_code == 200 and r.json()["result"]["id"] == aid, path


def test_stateful_actor_runs_100_messages_in_order(live_server):
    aid = live_server.register(stateless=False)["id"]
    eids = [live_server.send(aid, f"m{i}") for i in range(100)]
    deadline = time.monotonic() + 120
    while True:
        summary = live_server.get(f"/actors/{aid}/executions").json()["result"]
        if all(e["status"] == "COMPLETE" for e in summary["executions"]) and \
                summary["total_executions"] == 100:
            break
        assert time.monotonic() < deadline, "100 messages did not complete in time"
        time.sleep(0.2)
    by_id = {e["id"]: e for e in summary["executions"]}
    starts = [by_id[e]["start_time"] for e in eids]
    finishes = [by_id[e]["finish_time"] for e in eids]
    assert starts == sorted(starts)
    # Strictly one at a time: each execution starts after the previous one finished.
    assert all(starts[i] >= finishes[i - 1] for i in range(1, 100))
    assert "Contents of MSG: m99" in live_server.logs(aid, eids[-1])


def test_camel_case_instance_and_log_truncation(server_factory):
    server = server_factory(case="camel", max_log_bytes=5000)
    r = server.post("/actors", json={"image": "lightabaco/noisy", "defaultEnvironment": {"a": "b"}})
    actor = envelope_ok(r)["result"]
    assert actor["defaultEnvironment"] == {"a": "b"} and "statusMessage" in actor
    assert "useContainerUid" in actor and "createTime" in actor and "maxWorkers" not in actor
    aid = actor["id"]
    server.wait_actor(aid, "READY")
    r = server.post(f"/actors/{aid}/messages", data={"message": "x"})
    eid = envelope_ok(r)["result"]["executionId"]
    ex = server.wait_execution(aid, eid)
    for key in ("actorId", "workerId", "exitCode", "finalState", "messageReceivedTime", "startTime"):
        assert ex[key] is not None, key
    assert not [k for k, v in ex.items() if v is None]
    logs = server.logs(aid, eid)
    assert logs.endswith("LOG LIMIT EXCEEDED; this execution log was TRUNCATED!")
    assert len(logs) < 5200
    summary = server.get(f"/actors/{aid}/executions").json()["result"]
    assert summary["totalExecutions"] == 1 and "messageReceivedTime" in summary["executions"][0]


def test_autoscaler_adds_workers_for_a_stateless_backlog(live_server):
    aid = live_server.register("lightabaco/sleep", max_workers=2)["id"]
    eids = [live_server.send(aid, f"b{i}", params={"ITERATIONS": "1", "SLEEP": "0.3"}) for i in range(12)]
    for eid in eids:
        live_server.wait_execution(aid, eid, timeout=60)
    workers_used = {live_server.get(f"/actors/{aid}/executions/{e}").json()["result"]["worker_id"]
                    for e in eids}
    assert len(workers_used) == 2  # scaled up to max_workers, and not beyond
