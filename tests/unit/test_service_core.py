"""Core use cases against a real SQLite database, without processes."""

from __future__ import annotations

import pytest

from lightabaco.abaco import actors, environment, executions, messages, state, workers_api
from lightabaco.protocol.errors import NotFound, PermissionDenied, ValidationError
from lightabaco.store.models import Actor, Execution, Message, Worker


def test_register_defaults_and_one_worker_requested(service_env):
    admin = service_env.admin()
    shown = actors.create_actor(service_env.services, admin, {"image": "abacosamples/test", "name": "n"})
    assert shown["stateless"] is True and shown["token"] == "false" and shown["status"] == "SUBMITTED"
    assert shown["create_time"].endswith("Z") and shown["_links"]["self"].endswith(f"/actors/{shown['id']}")
    rows = list(Worker.select())
    assert len(rows) == 1 and rows[0].status == "REQUESTED" and rows[0].revision == 1
    assert ("supervisor", None) in service_env.services.notifier.calls
    assert actors.list_actors(service_env.services, admin)[0]["id"] == shown["id"]


def test_validation_rules(service_env):
    s, admin, user = service_env.services, service_env.admin(), service_env.user()
    with pytest.raises(ValidationError, match="stateful actors can only have 1 worker"):
        actors.create_actor(s, admin, {"image": "x", "stateless": False, "max_workers": 2})
    with pytest.raises(ValidationError, match="Error character: \\["):
        actors.create_actor(s, admin, {"image": "x", "hints": ["a[b"]})
    with pytest.raises(PermissionDenied, match="can set max workers"):
        actors.create_actor(s, user, {"image": "x", "max_workers": 2})
    with pytest.raises(ValidationError, match="Cannot set both"):
        actors.create_actor(s, admin, {"image": "x", "use_container_uid": True, "run_as_executor": True})
    with pytest.raises(ValidationError, match="mem_limit"):
        actors.create_actor(s, admin, {"image": "x", "mem_limit": "lots"})
    assert actors.mem_bytes("512m") == 512 << 20 and actors.mem_bytes(None) is None


def test_put_is_full_replacement_with_revision_rules(service_env):
    s, admin = service_env.services, service_env.admin()
    a = actors.create_actor(s, admin, {"image": "img1", "name": "keep", "description": "d",
                                       "stateless": False, "default_environment": {"k": "v"}})
    state.set_state(s, admin, a["id"], {"n": 1})
    with pytest.raises(ValidationError, match="cannot be updated to be stateless"):
        actors.update_actor(s, admin, a["id"], {"image": "img1"})
    same = actors.update_actor(s, admin, a["id"], {"image": "img1", "stateless": "false"})
    assert same["revision"] == 1 and same["description"] == "" and same["default_environment"] == {}
    assert same["name"] == "keep" and same["state"] == {"n": 1}  # state survives a PUT (deliberate)
    Worker.update(status="READY").execute()
    new = actors.update_actor(s, admin, a["id"], {"image": "img2", "stateless": "false"})
    assert new["revision"] == 2 and new["status"] == "SUBMITTED"
    statuses = sorted(w.status for w in Worker.select())
    assert statuses == ["REQUESTED", "SHUTDOWN_REQUESTED"]
    forced = actors.update_actor(s, admin, a["id"], {"image": "img2", "stateless": "false", "force": "true"})
    assert forced["revision"] == 3


def test_messages_commit_execution_and_mailbox_row(service_env):
    s, admin = service_env.services, service_env.admin()
    a = actors.create_actor(s, admin, {"image": "img"})
    sent = messages.send_message(s, admin, a["id"], {"k": [1, 2]}, messages.JSON, {"q": "1", "x-nonce": "n"})
    assert sent.result["msg"] == {"k": [1, 2]}
    msg = Message.get()
    assert msg.content_type == "application/json" and msg.body == b'{"k": [1, 2]}'
    assert msg.env["q"] == "1" and "x-nonce" not in msg.env and msg.env["_abaco_username"] == "admin"
    assert msg.env["_abaco_execution_id"] == sent.execution_id
    ex = Execution.get()
    assert ex.status == "SUBMITTED" and ex.executor == "admin"
    assert messages.count_messages(s, admin, a["id"])["messages"] == 1
    # Sync admission: refused once more than 3 messages wait.
    for _ in range(3):
        messages.send_message(s, admin, a["id"], "x", messages.STR, {})
    with pytest.raises(ValidationError, match="message queue > 0"):
        messages.send_message(s, admin, a["id"], "x", messages.STR, {}, synchronous=True)
    purged = messages.purge_messages(s, admin, a["id"])
    assert purged["msg"] == "Actor mailbox purged." and Message.select().count() == 0
    assert {e.status for e in Execution.select()} == {"ERROR"}


def test_environment_layers_and_encoding(service_env):
    s, admin = service_env.services, service_env.admin()
    a = actors.create_actor(s, admin, {"image": "img", "name": None,
                                       "default_environment": {"k1": "v1", "k2": "v2"}})
    row = Actor.get()
    msg_env = {"k2": "override", "_abaco_Content_Type": "application/json", "_abaco_username": "u"}
    env = environment.build_env(s, row, msg_env, b'{"a": true, "b": null}', "application/json", "W1")
    assert env["MSG"] == "{'a': True, 'b': None}"
    assert env["k1"] == "v1" and env["k2"] == "override"
    assert env["_abaco_Content-Type"] == env["_abaco_Content_Type"] == "application/json"
    assert env["_abaco_actor_state"] == "{}" and env["_abaco_actor_name"] == "None"
    assert env["_abaco_worker_id"] == "W1" and env["_abaco_actor_id"] == a["id"]
    assert env["_abaco_access_token"] == ""
    binary = environment.build_env(s, row, {"_abaco_Content_Type": "application/octet-stream"}, b"\0\1",
                                   "application/octet-stream", "W1")
    assert "MSG" not in binary


def test_executions_force_quit_and_results(service_env):
    s, admin = service_env.services, service_env.admin()
    a = actors.create_actor(s, admin, {"image": "img"})
    sent = messages.send_message(s, admin, a["id"], "x", messages.STR, {})
    with pytest.raises(ValidationError, match="was found in status: SUBMITTED"):
        executions.force_quit(s, admin, a["id"], sent.execution_id)
    Execution.update(status="RUNNING", worker_id="W9").execute()
    assert executions.force_quit(s, admin, a["id"], sent.execution_id).startswith("Issued force quit")
    assert Execution.get().force_quit is True
    assert ("worker", ("W9", b"kill")) in s.notifier.calls
    with pytest.raises(NotFound, match="No executions found"):
        executions.get_execution(s, admin, a["id"], "nope")
    from lightabaco.store.models import Result

    Result.insert(execution_dbid=sent.execution_dbid, data=b"one", created=s.now()).execute()
    Result.insert(execution_dbid=sent.execution_dbid, data=b"two", created=s.now()).execute()
    Result.insert(execution_dbid=sent.execution_dbid, data=b"old", created=s.now() - 7200).execute()
    got = [executions.get_result(s, admin, a["id"], sent.execution_id) for _ in range(3)]
    assert got == [b"one", b"two", b""]  # popped in order; the 2-hour-old one has expired


def test_workers_admin_api_and_delete_actor(service_env):
    s, admin, user = service_env.services, service_env.admin(), service_env.user()
    a = actors.create_actor(s, admin, {"image": "img"})
    assert workers_api.add_workers(s, admin, a["id"], 3).startswith("Scheduled 2 new worker(s)")
    assert workers_api.add_workers(s, admin, a["id"], 2) == f"Actor {a['id']} already had 2 worker(s)."
    with pytest.raises(PermissionDenied, match="only admins"):
        workers_api.add_workers(s, user, a["id"], 1)
    listed = workers_api.list_workers(s, admin, a["id"])
    assert len(listed) == 3 and listed[0]["last_execution_time"] == "None"
    with pytest.raises(NotFound, match="Worker not found."):
        workers_api.get_worker(s, admin, a["id"], "nope")
    sent = messages.send_message(s, admin, a["id"], "x", messages.STR, {})
    actors.delete_actor(s, admin, a["id"])
    with pytest.raises(NotFound):
        actors.get_actor(s, admin, a["id"])
    assert {w.status for w in Worker.select()} == {"SHUTDOWN_REQUESTED"}
    assert Message.select().count() == 0
    assert Execution.get(Execution.id == sent.execution_id).status == "ERROR"


def test_token_actor_gets_an_access_token(service_env):
    s, admin = service_env.services, service_env.admin()
    actors.create_actor(s, admin, {"image": "img", "token": True})
    row = Actor.get()
    assert row.token is True
    env = environment.build_env(s, row, {}, b"x", "str", "W1")
    token = env["_abaco_access_token"]
    assert token and token.count(".") == 2  # a JWT for the actor's owner
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["tapis/username"] == "admin" and claims["exp"] > claims["iat"]


def test_housekeeping_expires_logs_and_results(service_env):
    from lightabaco.abaco import housekeeping
    from lightabaco.store.models import Log, Result

    s = service_env.services
    now = 1_000_000.0
    Log.insert(execution_dbid="DEV_a_e1", actor_dbid="DEV_a", text="old", expires=now - 1).execute()
    Log.insert(execution_dbid="DEV_a_e2", actor_dbid="DEV_a", text="fresh", expires=now + 10).execute()
    Log.insert(execution_dbid="DEV_a_e3", actor_dbid="DEV_a", text="forever", expires=None).execute()
    Result.insert(execution_dbid="DEV_a_e1", data=b"old", created=now - 3601).execute()
    Result.insert(execution_dbid="DEV_a_e1", data=b"new", created=now - 10).execute()
    assert housekeeping.run(s, now=now) == {"logs": 1, "results": 1, "stray_logs": 0, "executions": 0,
                                            "scratch": 0}
    assert sorted(l.text for l in Log.select()) == ["forever", "fresh"]
    assert [bytes(r.data) for r in Result.select()] == [b"new"]
