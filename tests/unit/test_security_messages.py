"""Issue 8 items 2 and 10 in-process: what a message sender may put into the owner's execution
environment, the owner's allow-list, platform variables that always win; result and queue quotas."""

from __future__ import annotations

import pytest

from lightabaco.core import environment, message_env
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
