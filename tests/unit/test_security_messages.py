"""Issue 8 items 2 and 10 in-process: what a message sender may put into the owner's execution
environment, the owner's allow-list, platform variables that always win; result and queue quotas."""

from __future__ import annotations

import pytest

from lightabaco.abaco import environment
from lightabaco.abaco import message_env
from lightabaco.store.models import Actor, Execution, Message


def res(r):
    assert r.status_code == 200, r.text
    return r.json()["result"]


def env_of(sharing_client, aid):
    """The environment the newest queued message of an actor would run with."""
    msg = Message.select().order_by(Message.id.desc()).first()
    row = Actor.get(Actor.id == aid)
    return environment.build_env(sharing_client.env.services, row, msg.env, msg.body, msg.content_type, "W")


ATTACKS = [
    ("PYTHONPATH", "/_abaco_binary_data"), ("LD_PRELOAD", "/_abaco_binary_data"),
    ("ld_preload", "/x"), ("PERL5OPT", "-Mevil"), ("PERLLIB", "/x"), ("RUBYOPT", "-revil"),
    ("NODE_OPTIONS", "--require /x"), ("JAVA_TOOL_OPTIONS", "-javaagent:/x"), ("_JAVA_OPTIONS", "x"),
    ("JDK_JAVA_OPTIONS", "x"), ("BASH_ENV", "/x"), ("ENV", "/x"), ("PATH", "/x"), ("path", "/x"),
    ("HOME", "/x"), ("IFS", "x"), ("SHELLOPTS", "xtrace"), ("BASHOPTS", "x"), ("PS4", "$(evil)"),
    ("GCONV_PATH", "/x"), ("LOCPATH", "/x"), ("MALLOC_ARENA_MAX", "1"), ("GLIBC_TUNABLES", "x"),
    ("_abaco_access_token", "forged"), ("_ABACO_API_SERVER", "http://evil"), ("_abaco_foo", "x"),
    ("_actor_configs", "{}"), ("https_proxy", "http://evil:1"), ("BASH_FUNC_ls%%", "() { evil; }"),
    ("PYTHONSTARTUP", "/x"), ("CLASSPATH", "/x"),
]


@pytest.mark.parametrize("name,value", ATTACKS)
def test_sender_cannot_set_loader_or_trust_variables(sharing_client, name, value):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner", token=True)
    res(c.post(f"/actors/{aid}/permissions", data={"user": "regular", "level": "EXECUTE"}, headers=h("owner")))
    before = Execution.select().count()
    r = c.post(f"/actors/{aid}/messages", params={name: value}, data={"message": "x"}, headers=h("regular"))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "error" and name in body["message"] and "message_env_allow" in body["message"]
    assert Execution.select().count() == before and Message.select().count() == 0


def test_nonce_sender_is_refused_too_and_binary_zip_attack(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner", token=True)
    nid = res(c.post(f"/actors/{aid}/nonces", data={"level": "EXECUTE"}, headers=h("owner")))["id"]
    r = c.post(f"/actors/{aid}/messages?x-nonce={nid}&PYTHONPATH=/_abaco_binary_data&LD_PRELOAD=/x.so",
               content=b"PK\x03\x04 sitecustomize.py", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 400, r.text
    assert "LD_PRELOAD" in r.json()["message"] and "PYTHONPATH" in r.json()["message"]
    assert Execution.select().count() == 0
    # The ordinary parameters of a nonce sender still work.
    res(c.post(f"/actors/{aid}/messages?x-nonce={nid}&COLOR=blue", data={"message": "x"}))
    env = env_of(sharing_client, aid)
    assert env["COLOR"] == "blue" and "x-nonce" not in env


def test_invalid_names_and_nul_values_are_refused(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    for query in ("A%3DB=1", "=x", "A%00B=1", "OK=a%00b"):
        r = c.post(f"/actors/{aid}/messages?{query}", data={"message": "x"}, headers=h("owner"))
        assert r.status_code == 400 and "cannot become environment variables" in r.json()["message"], query
    # Even the owner's allow-list cannot make an invalid name valid.
    res(c.put(f"/actors/{aid}", json={"image": "abacosamples/test", "message_env_allow": ["*"]},
              headers=h("owner")))
    r = c.post(f"/actors/{aid}/messages?A%3DB=1", data={"message": "x"}, headers=h("owner"))
    assert r.status_code == 400
    assert Message.select().count() == 0


def test_default_environment_keys_belong_to_the_owner(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner", default_environment={"MODE": "safe", "PATH": "/opt/bin:/bin"})
    r = c.post(f"/actors/{aid}/messages?MODE=unsafe", data={"message": "x"}, headers=h("owner"))
    assert r.status_code == 400 and "MODE" in r.json()["message"]
    res(c.post(f"/actors/{aid}/messages?OTHER=1", data={"message": "x"}, headers=h("owner")))
    env = env_of(sharing_client, aid)
    assert env["MODE"] == "safe" and env["PATH"] == "/opt/bin:/bin" and env["OTHER"] == "1"


def test_owner_allow_list_lets_exactly_the_named_variables_through(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner", default_environment={"MODE": "safe"})
    res(c.post(f"/actors/{aid}/permissions", data={"user": "regular", "level": "EXECUTE"}, headers=h("owner")))
    # Only UPDATE may set the list: an EXECUTE user cannot grant it to themselves.
    r = c.put(f"/actors/{aid}", json={"image": "abacosamples/test", "message_env_allow": ["PYTHONPATH"]},
              headers=h("regular"))
    assert r.status_code in (400, 403) and Actor.get().message_env_allow == []
    shown = res(c.put(f"/actors/{aid}", json={"image": "abacosamples/test", "default_environment": {"MODE": "safe"},
                                              "message_env_allow": ["PYTHONPATH", "MODE", "MYAPP_*",
                                                                    "_abaco_access_token", "_abaco_api_server"]},
                      headers=h("owner")))
    assert shown["message_env_allow"] == ["PYTHONPATH", "MODE", "MYAPP_*", "_abaco_access_token",
                                          "_abaco_api_server"]
    assert res(c.get(f"/actors/{aid}", headers=h("regular")))["message_env_allow"] == shown["message_env_allow"]
    res(c.post(f"/actors/{aid}/messages", params={"PYTHONPATH": "/_abaco_binary_data", "MODE": "fast",
                                                  "MYAPP_LEVEL": "3", "_abaco_access_token": "forged",
                                                  "_abaco_api_server": "http://evil.example"},
               data={"message": "x"}, headers=h("regular")))
    env = env_of(sharing_client, aid)
    assert env["PYTHONPATH"] == "/_abaco_binary_data" and env["MODE"] == "fast" and env["MYAPP_LEVEL"] == "3"
    # Allowed or not, platform variables are the platform's.
    assert env["_abaco_access_token"] != "forged" and env["_abaco_api_server"] != "http://evil.example"
    assert env["_abaco_username"] == "regular"
    # Not on the list: still refused; a prefix entry does not allow its neighbours.
    r = c.post(f"/actors/{aid}/messages", params={"LD_PRELOAD": "/x", "MYAPPX": "1"}, data={"message": "x"},
               headers=h("regular"))
    assert r.status_code == 400 and "LD_PRELOAD" in r.json()["message"]
    # PUT without the field resets it (PUT replaces the description, like default_environment).
    res(c.put(f"/actors/{aid}", json={"image": "abacosamples/test"}, headers=h("owner")))
    assert Actor.get().message_env_allow == []


@pytest.mark.parametrize("bad", [{"a": 1}, [1], ["A=B"], [""], ["X" * 300], ["a"] * 101])
def test_allow_list_validation(sharing_client, bad):
    c, h = sharing_client.client, sharing_client.h
    r = c.post("/actors", json={"image": "abacosamples/test", "message_env_allow": bad}, headers=h("owner"))
    assert r.status_code == 400 and "message_env_allow" in r.json()["message"]


def test_camel_case_field_name(sharing_client):
    s = sharing_client.env.services
    s.settings.case = "camel"
    try:
        c, h = sharing_client.client, sharing_client.h
        r = c.post("/actors", json={"image": "abacosamples/test", "messageEnvAllow": ["PYTHONPATH"]},
                   headers=h("owner"))
        aid = res(r)["id"]
        assert res(r)["messageEnvAllow"] == ["PYTHONPATH"]
        r = c.post(f"/actors/{aid}/messages?LD_PRELOAD=x", data={"message": "x"}, headers=h("owner"))
        assert r.status_code == 400 and "messageEnvAllow" in r.json()["message"]
    finally:
        s.settings.case = "snake"


def test_platform_variables_win_over_defaults_and_stored_messages(sharing_env):
    """Layering: defaults < sender < platform; a message stored before the rule existed (or by a path
    that skipped the check) loses its dangerous variables when the execution starts."""
    owner = sharing_env.user("alice")
    row = sharing_env.make_actor(owner, default_environment={"_abaco_username": "admin", "MSG": "fake",
                                                              "_abaco_api_server": "http://evil",
                                                              "_actor_configs": "{'x': 1}", "K": "v"},
                                 token="true")
    stored = {"LD_PRELOAD": "/x", "PYTHONPATH": "/y", "K2": "ok", "_abaco_execution_id": "E1",
              "_abaco_api_server": "http://api", "_abaco_Content_Type": "str", "_abaco_synchronous": "true"}
    env = environment.build_env(sharing_env.services, row, stored, b"hello", "str", "W1")
    assert "LD_PRELOAD" not in env and "PYTHONPATH" not in env
    assert env["K"] == "v" and env["K2"] == "ok" and env["_abaco_synchronous"] == "true"
    assert env["MSG"] == "hello" and env["_abaco_api_server"] == "http://api"
    assert "_abaco_username" not in env and "_actor_configs" not in env  # cron-like: the platform set none
    assert env["_abaco_access_token"] and env["_abaco_execution_id"] == "E1"


def test_policy_functions():
    assert message_env.is_dangerous("ld_library_path") and message_env.is_dangerous("Python_Anything")
    assert message_env.is_dangerous("HTTP_PROXY") and message_env.is_dangerous("no_proxy")
    assert not message_env.is_dangerous("PYTH") and not message_env.is_dangerous("MY_PATH")
    assert not message_env.is_dangerous("ENVIRONMENT") and not message_env.is_dangerous("COLOR")
    assert message_env.allowed_by("MYAPP_X", ["MYAPP_*"]) and not message_env.allowed_by("MYAPPX", ["MYAPP_*"])
    assert not message_env.allowed_by("pythonpath", ["PYTHONPATH"])


def test_existing_database_gets_the_new_column(tmp_path):
    """A database made before message_env_allow existed opens, and its actors read as allowing none."""
    import sqlite3

    from lightabaco.config import Settings
    from lightabaco.store import db

    settings = Settings.from_env(environ={}, home=tmp_path / "home")
    db.connect(settings)
    Actor.create(dbid="DEV_a", id="a", tenant="DEV", image="i", owner="o", create_time=1, last_update_time=1)
    db.close()
    conn = sqlite3.connect(settings.db_path)
    conn.execute('ALTER TABLE "actor" DROP COLUMN "message_env_allow"')
    conn.commit()
    conn.close()
    db.connect(settings)
    try:
        assert (Actor.get().message_env_allow or []) == []
        db.connect(settings)  # idempotent
    finally:
        db.close()


# -- item 10: result and queue quotas ---------------------------------------------------------------


def run_one(service_env, results, **actor_fields):
    """Send one message to a new actor (with the fake backend from test_service_runner sending
    `results`) and run it through the real Runner; returns the execution row."""
    from lightabaco.abaco import actors, messages
    from lightabaco.store.models import Worker
    from lightabaco.workers.runner import claim_next
    from tests.unit.test_service_runner import FakeBackend, make_runner

    s, admin = service_env.services, service_env.admin()
    a = actors.create_actor(s, admin, {"image": "img", **actor_fields})
    row = Actor.get(Actor.id == a["id"])
    worker = Worker.get(Worker.actor_dbid == row.dbid)
    worker.status = "READY"
    worker.save()
    sent = messages.send_message(s, admin, a["id"], "hi", messages.STR, {})
    runner = make_runner(service_env, worker, FakeBackend(results=results))
    claimed, actor = claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir)
    runner.execute(claimed, actor)
    return Execution.get(Execution.dbid == sent.execution_dbid), a


def stored(execution_dbid):
    from lightabaco.store.models import Result

    return [r.data for r in Result.select().where(Result.execution_dbid == execution_dbid).order_by(Result.id)]


def test_empty_datagrams_count_per_execution(service_env):
    from lightabaco.store.models import Log

    service_env.services.settings.results_max_count_per_execution = 5
    ex, _ = run_one(service_env, [b""] * 50)
    assert stored(ex.dbid) == [b""] * 5
    note = ex.final_state["ResultsQuota"]
    assert "results quota reached" in note and "45 result(s)" in note and "results_max_count_per_execution" in note
    assert ex.status == "COMPLETE"
    log_text = Log.get(Log.execution_dbid == ex.dbid).text
    assert log_text.startswith("hello\n") and f"[lightabaco] {note}" in log_text


def test_bytes_per_execution(service_env):
    service_env.services.settings.results_max_bytes_per_execution = 1000
    ex, _ = run_one(service_env, [b"x" * 400] * 4 + [b"y" * 100])
    assert stored(ex.dbid) == [b"x" * 400] * 2 + [b"y" * 100]  # the small one still fits
    assert "2 result(s) (800 bytes)" in ex.final_state["ResultsQuota"]


def test_no_note_when_within_quota(service_env):
    ex, _ = run_one(service_env, [b"a", b""])
    assert stored(ex.dbid) == [b"a", b""] and "ResultsQuota" not in ex.final_state


def test_per_owner_quota_spans_actors_and_reading_gives_room_back(service_env):
    from lightabaco.abaco import executions
    from lightabaco.abaco import result_quota

    s = service_env.services
    s.settings.results_max_count_per_user = 7
    s.settings.results_max_bytes_per_user = 10_000
    first, a1 = run_one(service_env, [b"1"] * 5)
    second, a2 = run_one(service_env, [b"2"] * 5)
    assert len(stored(first.dbid)) == 5 and len(stored(second.dbid)) == 2
    assert "results_max_count_per_user" in second.final_state["ResultsQuota"]
    assert result_quota.usage(s.settings.tenant, "admin") == (7, 7)
    admin = service_env.admin()
    assert executions.get_result(s, admin, a1["id"], first.id) == b"1"
    assert result_quota.usage(s.settings.tenant, "admin") == (6, 6)
    third, _ = run_one(service_env, [b"3"] * 3)
    assert len(stored(third.dbid)) == 1
    # Bytes too: one big result over the owner's byte cap is refused.
    s.settings.results_max_count_per_user = 0
    fourth, _ = run_one(service_env, [b"z" * 9_999])
    assert stored(fourth.dbid) == [] and "results_max_bytes_per_user" in fourth.final_state["ResultsQuota"]


def test_per_owner_quota_holds_under_concurrent_writers(service_env):
    """Several worker processes store results for one owner at once: the conditional UPDATE in the
    insert's transaction never lets the total pass the cap (threads here; each has its own connection)."""
    import threading

    from lightabaco.abaco import result_quota
    from lightabaco.store.models import Result

    s = service_env.services
    s.settings.results_max_count_per_user = 60
    tallies = [result_quota.Tally("DEV/bob") for _ in range(4)]
    errors = []

    def flood(tally, n):
        try:
            for _ in range(40):
                result_quota.store(s, f"DEV_x_e{n}", tally, b"")
                tally._user_blocked_until = 0  # keep asking the database, as a fresh execution would
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flood, args=(t, i)) for i, t in enumerate(tallies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert Result.select().count() == 60 == sum(t.stored_count for t in tallies)
    assert sum(t.dropped_count for t in tallies) == 100
    assert result_quota.usage("DEV", "bob") == (60, 0)


def test_housekeeping_recomputes_usage_and_drops_deleted_actors_results(service_env):
    from lightabaco.abaco import actors, housekeeping
    from lightabaco.abaco import result_quota
    from lightabaco.store.models import Result, ResultUsage

    s = service_env.services
    first, a1 = run_one(service_env, [b"ab"] * 3)
    second, a2 = run_one(service_env, [b"c"] * 2)
    ResultUsage.update(count=999, bytes=999).execute()  # a counter a crashed process left wrong
    housekeeping.run(s)
    assert result_quota.usage(s.settings.tenant, "admin") == (5, 8)
    actors.delete_actor(s, service_env.admin(), a1["id"])
    housekeeping.run(s)
    assert stored(first.dbid) == [] and len(stored(second.dbid)) == 2
    assert result_quota.usage(s.settings.tenant, "admin") == (2, 2)
    # Expired results give their room back too.
    Result.update(created=0).execute()
    housekeeping.run(s)
    assert result_quota.usage(s.settings.tenant, "admin") == (0, 0)


def test_rerun_discards_its_results_and_their_quota(service_env):
    from lightabaco.abaco import result_quota

    ex, _ = run_one(service_env, [b"q"] * 3)
    result_quota.discard(ex.dbid, result_quota.owner_key("DEV", "admin"))
    assert stored(ex.dbid) == [] and result_quota.usage("DEV", "admin") == (0, 0)


def test_queue_cap_per_sender(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    settings = sharing_client.env.services.settings
    settings.max_queued_messages_per_user = 3
    aid = sharing_client.create_actor("owner")
    res(c.post(f"/actors/{aid}/permissions", data={"user": "regular", "level": "EXECUTE"}, headers=h("owner")))
    for _ in range(3):
        res(c.post(f"/actors/{aid}/messages", data={"message": "x"}, headers=h("regular")))
    r = c.post(f"/actors/{aid}/messages", data={"message": "x"}, headers=h("regular"))
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["status"] == "error" and "3 messages queued or running" in body["message"]
    assert "max_queued_messages_per_user" in body["message"] and Message.select().count() == 3
    # Another sender (the owner) is not affected by regular's backlog.
    res(c.post(f"/actors/{aid}/messages", data={"message": "x"}, headers=h("owner")))
    # Finished executions free the room; RUNNING ones still count.
    first, second = list(Execution.select().where(Execution.executor == "regular").order_by(Execution.seq))[:2]
    Execution.update(status="COMPLETE").where(Execution.seq == first.seq).execute()
    Execution.update(status="RUNNING").where(Execution.seq == second.seq).execute()
    res(c.post(f"/actors/{aid}/messages", data={"message": "x"}, headers=h("regular")))
    assert c.post(f"/actors/{aid}/messages", data={"message": "x"}, headers=h("regular")).status_code == 429
    # Purging the mailbox ends the queued executions: room again.
    res(c.delete(f"/actors/{aid}/messages", headers=h("owner")))
    res(c.post(f"/actors/{aid}/messages", data={"message": "x"}, headers=h("regular")))


def test_queue_cap_does_not_apply_to_platform_messages(service_env):
    from lightabaco.abaco import actors, messages
    from lightabaco.automation import cron

    s = service_env.services
    s.settings.max_queued_messages_per_user = 1
    a = actors.create_actor(s, service_env.admin(), {"image": "img"})
    row = Actor.get()
    messages.send_message(s, service_env.admin(), a["id"], "x", messages.STR, {})
    cron.send_cron_message(s, row)
    messages.enqueue_for_actor(s, None, row, {"event_type": "X"}, messages.JSON, {}, executor="Abaco Event")
    assert Message.select().count() == 3


# -- fuzzing the message and actor request parsers ----------------------------------------------------
#
# A bounded property test: random content types, bodies, query strings, JSON nesting and field types
# against POST /actors/{id}/messages, POST /actors and PUT /actors/{id}. Every answer must be a
# well-formed Abaco envelope with a 2xx or 4xx status, never a 5xx. FUZZ_EXAMPLES bounds the run
# (about 30-60 s on the 2-core CI machine); LIGHTABACO_FUZZ_EXAMPLES raises it for a longer campaign.

import json as _json
import os as _os

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

FUZZ_EXAMPLES = int(_os.environ.get("LIGHTABACO_FUZZ_EXAMPLES", "1500"))
FUZZ_BUDGET_S = float(_os.environ.get("LIGHTABACO_FUZZ_BUDGET_S", "60"))  # wall-clock cap of one run
FUZZ_TRIED: dict[str, int] = {"inputs": 0}

_ACTOR_KEYS = ["image", "name", "description", "stateless", "default_environment", "defaultEnvironment",
               "hints", "link", "webhook", "privileged", "use_container_uid", "useContainerUid",
               "run_as_executor", "max_workers", "maxWorkers", "mem_limit", "memLimit", "max_cpus",
               "max_run_time", "token", "queue", "log_ex", "logEx", "cron_schedule", "cronSchedule",
               "cron_on", "cronOn", "type", "message_env_allow", "messageEnvAllow", "force", "message"]
_QUERY_KEYS = ["message", "x-nonce", "_abaco_synchronous", "PYTHONPATH", "LD_PRELOAD", "path", "A", "",
               "=", "a=b", "_abaco_x", "MSG", "ITERATIONS", "\u00e9t\u00e9", "k\x00"]
_CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "application/octet-stream",
                  "application/x-www-form-urlencoded", "multipart/form-data; boundary=XyZ",
                  "multipart/form-data", "text/plain", "", "APPLICATION/JSON", "application/json;;;",
                  "\u00e9/\u00e9"]

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
_json_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=25)
_actor_bodies = st.dictionaries(st.sampled_from(_ACTOR_KEYS), _json_values, max_size=8)


def _json_bytes(value) -> bytes:
    return _json.dumps(value, allow_nan=True).encode()


_bodies = st.one_of(
    st.binary(max_size=200),
    _json_values.map(_json_bytes),
    _actor_bodies.map(_json_bytes),
    st.lists(st.tuples(st.sampled_from(_ACTOR_KEYS + _QUERY_KEYS), st.text(max_size=20)), max_size=6).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")),
    st.just(b'--XyZ\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n--XyZ--\r\n'),
    st.just(b'--XyZ\r\nContent-Disposition: form-data; name="message"\r\n\r\nunterminated'),
)
_queries = st.lists(st.tuples(st.one_of(st.sampled_from(_QUERY_KEYS), st.text(max_size=10)),
                              st.one_of(st.text(max_size=20), st.sampled_from(["true", "True", "false", ""]))),
                    max_size=5)


def _check_envelope(r, what) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:500])
    assert 200 <= r.status_code < 500, (what, r.status_code)
    body = r.json()
    assert set(body) >= {"result", "status", "version", "message"}, (what, body)
    assert body["status"] == ("success" if r.status_code < 300 else "error"), (what, body)
    assert isinstance(body["message"], str), (what, body)


def test_fuzz_message_and_actor_parsers(sharing_env):
    """Random requests never make the API answer 5xx or anything but an Abaco envelope."""
    import warnings

    from urllib.parse import urlencode

    from lightabaco.sharing import auth
    from lightabaco.http.app import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx`")
        from starlette.testclient import TestClient

    import time

    sharing_env.services.settings.max_queued_messages_per_user = 100_000
    stop_at = time.monotonic() + FUZZ_BUDGET_S
    token = auth.get_authenticator(sharing_env.services).owner().token
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(sharing_env.services), raise_server_exceptions=False) as client:
        aid = res(client.post("/actors", json={"image": "abacosamples/test"}, headers=headers))["id"]

        @hsettings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
        @given(target=st.sampled_from(["message", "message", "register", "update"]),
               content_type=st.one_of(st.sampled_from(_CONTENT_TYPES), st.text(max_size=15)),
               body=_bodies, query=_queries, declare_length=st.booleans())
        def one(target, content_type, body, query, declare_length):
            if time.monotonic() > stop_at:
                return  # over the time budget on a slow machine: the remaining examples are skipped
            FUZZ_TRIED["inputs"] += 1
            # A synchronous message would wait for an execution that no worker runs here; that wait
            # (and its 504) is the synchronous protocol, not parsing.
            query = [(k, v) for k, v in query if not (k == "_abaco_synchronous" and v.lower() == "true")]
            qs = urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass"))
                            for k, v in query])
            req_headers: dict[str, str | bytes] = dict(headers)
            req_headers["Content-Type"] = content_type.encode("utf-8", "surrogatepass")  # raw bytes
            if not declare_length:
                req_headers["Transfer-Encoding"] = "chunked"
            method, path = {"message": ("POST", f"/actors/{aid}/messages"), "register": ("POST", "/actors"),
                            "update": ("PUT", f"/actors/{aid}")}[target]
            r = client.request(method, f"{path}?{qs}" if qs else path, content=body, headers=req_headers)
            _check_envelope(r, (target, content_type, body[:200], qs))
            if target == "update" and r.status_code == 200:  # keep the actor usable for later inputs
                res(client.put(f"/actors/{aid}", json={"image": "abacosamples/test"}, headers=headers))

        one()
    print(f"fuzz: {FUZZ_TRIED['inputs']} inputs tried")
    assert FUZZ_TRIED["inputs"] >= min(FUZZ_EXAMPLES, 100)


def test_deeply_nested_json_message_is_a_400(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    deep = b"[" * 100_000 + b"]" * 100_000
    r = c.post(f"/actors/{aid}/messages", content=deep, headers={**h("owner"), "Content-Type": "application/json"})
    assert r.status_code == 400
