"""Attacks on sharing through a live server (uvicorn, SQLite, bubblewrap), issue 8 items 3 and 9.

- Secret configs are bound to the actor they were attached to: an alias re-created by another user after
  its deletion does not receive them, and nobody attaches a config to an actor they cannot UPDATE.
- Tenants are isolated from each other's admins: only the instance owner (the owner token) crosses them.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import pytest
import requests

pytestmark = pytest.mark.e2e


@dataclass
class Users:
    url: str
    tokens: dict[str, str]

    def call(self, who: str, method: str, path: str, **kw):
        return requests.request(method, self.url + path, headers={"Authorization": f"Bearer {self.tokens[who]}"},
                                timeout=60, **kw)

    def ok(self, who: str, method: str, path: str, **kw):
        r = self.call(who, method, path, **kw)
        assert r.status_code == 200, (who, method, path, r.text)
        return r.json()["result"]

    def run(self, who: str, actor: str, message: str = "hi") -> str:
        """Send a message, wait until it ends, return its logs (the test image prints its environment)."""
        eid = self.ok(who, "POST", f"/actors/{actor}/messages", data={"message": message})["execution_id"]
        deadline = time.monotonic() + 60
        while self.ok(who, "GET", f"/actors/{actor}/executions/{eid}")["status"] not in ("COMPLETE", "ERROR"):
            assert time.monotonic() < deadline, f"execution {eid} of {actor} did not finish"
            time.sleep(0.05)
        return self.ok(who, "GET", f"/actors/{actor}/executions/{eid}/logs")["logs"]


@pytest.fixture(scope="module")
def users(live_server) -> Users:
    """alice and bob (plain users) and dev_admin in the owner's tenant DEV; tb_admin (admin) and tb_user
    in tenant TB. All made by the owner over HTTP."""
    tokens = {"owner": live_server.token}
    made = Users(live_server.url, tokens)
    for name, role, tenant in (("alice", "user", None), ("bob", "user", None), ("dev_admin", "admin", None),
                               ("tb_admin", "admin", "TB"), ("tb_user", "user", "TB")):
        body = {"username": name, "role": role, **({"tenant": tenant} if tenant else {})}
        tokens[name] = made.ok("owner", "POST", "/actors/admin/users", json=body)["token"]
    return made


def new_actor(users: Users, who: str) -> str:
    return users.ok(who, "POST", "/actors", data={"image": "abacosamples/test"})["id"]


# -- item 3: configs follow the actor, not a name ---------------------------------------------------------


def test_a_recreated_alias_does_not_receive_the_deleted_alias_secret(users):
    secret = f"hunter2-{secrets.token_hex(6)}"
    x = new_actor(users, "alice")
    users.ok("alice", "POST", "/actors/aliases", data={"alias": "pipeline", "actor_id": x})
    users.ok("alice", "POST", "/actors/configs",
             json={"name": "db_password", "value": secret, "is_secret": True, "actors": "pipeline"})
    assert secret in users.run("alice", "pipeline")  # the config works while the alias stands
    shown = users.ok("alice", "GET", "/actors/configs/db_password")
    assert shown["actors"] == "pipeline" and shown["value"] != secret  # displayed as written, masked

    users.ok("alice", "DELETE", "/actors/aliases/pipeline")
    y = new_actor(users, "bob")
    users.ok("bob", "POST", "/actors/aliases", data={"alias": "pipeline", "actor_id": y})
    logs = users.run("bob", "pipeline")
    assert "_abaco_actor_id=" + y in logs  # it really ran bob's actor and printed its environment
    assert secret not in logs and "db_password" not in logs
    # the binding went with the alias: alice's actor does not get it through a stale name either
    assert "db_password" not in users.run("alice", x)
    # and bob cannot read alice's config
    assert users.call("bob", "GET", "/actors/configs/db_password").status_code == 400


@pytest.mark.parametrize("level", [None, "READ", "EXECUTE"])
def test_no_config_on_an_actor_without_update(users, level):
    x = new_actor(users, "alice")
    if level:
        users.ok("alice", "POST", f"/actors/{x}/permissions", data={"user": "bob", "level": level})
    name = f"bobs_{level or 'none'}"
    r = users.call("bob", "POST", "/actors/configs",
                   json={"name": name, "value": "planted", "is_secret": False, "actors": x})
    assert r.status_code == 400 and "UPDATE" in r.json()["message"], r.text
    # nor through an update of a config bob owns, nor through an alias of alice's he was given UPDATE on
    own = new_actor(users, "bob")
    users.ok("bob", "POST", "/actors/configs", json={"name": name, "value": "planted", "is_secret": False,
                                                     "actors": own})
    r = users.call("bob", "PUT", f"/actors/configs/{name}",
                   json={"value": "planted", "is_secret": False, "actors": f"{own}, {x}"})
    assert r.status_code == 400 and "UPDATE" in r.json()["message"], r.text
    alias = f"alice-{level or 'none'}".lower()
    users.ok("alice", "POST", "/actors/aliases", data={"alias": alias, "actor_id": x})
    users.ok("alice", "POST", f"/actors/aliases/{alias}/permissions", data={"user": "bob", "level": "UPDATE"})
    r = users.call("bob", "PUT", f"/actors/configs/{name}",
                   json={"value": "planted", "is_secret": False, "actors": alias})
    assert r.status_code == 400 and "UPDATE" in r.json()["message"], r.text
    assert users.ok("bob", "GET", f"/actors/configs/{name}")["actors"] == own  # unchanged
    logs = users.run("alice", x)
    assert "_abaco_actor_id=" + x in logs and "planted" not in logs and name not in logs


def test_a_config_on_a_shared_actor_works_with_update(users):
    x = new_actor(users, "alice")
    users.ok("alice", "POST", f"/actors/{x}/permissions", data={"user": "bob", "level": "UPDATE"})
    users.ok("bob", "POST", "/actors/configs",
             json={"name": "bobs_shared", "value": "welcome", "is_secret": False, "actors": x})
    assert "'bobs_shared': 'welcome'" in users.run("alice", x)


# -- item 9: a tenant admin stays in its tenant -----------------------------------------------------------


def test_a_tenant_admin_cannot_manage_another_tenants_users(users):
    r = users.call("tb_admin", "POST", "/actors/admin/users", json={"username": "mole", "role": "admin",
                                                                   "tenant": "DEV"})
    assert r.status_code == 400 and "instance owner" in r.json()["message"], r.text
    for method in ("POST", "DELETE"):  # re-issue or revoke alice's token
        r = users.call("tb_admin", method, "/actors/admin/users/alice?tenant=DEV")
        assert r.status_code == 400 and "instance owner" in r.json()["message"], r.text
    assert users.call("alice", "GET", "/actors").status_code == 200  # alice's token still works
    listed = users.ok("tb_admin", "GET", "/actors/admin/users")
    assert {(u["username"], u["tenant"]) for u in listed} == {("tb_admin", "TB"), ("tb_user", "TB")}
    everyone = {(u["username"], u["tenant"]) for u in users.ok("owner", "GET", "/actors/admin/users")}
    assert ("mole", "DEV") not in everyone and {("alice", "DEV"), ("tb_user", "TB")} <= everyone
    # inside its own tenant it remains an admin
    made = users.ok("tb_admin", "POST", "/actors/admin/users", json={"username": "tb_new", "role": "user"})
    assert made["tenant"] == "TB"
    # the owner's tenant's admins are tenant admins too
    r = users.call("dev_admin", "POST", "/actors/admin/users", json={"username": "x", "tenant": "TB"})
    assert r.status_code == 400, r.text


def test_a_tenant_admin_sees_nothing_of_another_tenant(users):
    x = new_actor(users, "alice")
    users.ok("alice", "POST", "/actors/aliases", data={"alias": "dev-only", "actor_id": x})
    users.ok("alice", "POST", "/actors/configs",
             json={"name": "dev_cfg", "value": "v", "is_secret": False, "actors": x})
    nonce = users.ok("alice", "POST", f"/actors/{x}/nonces", data={"level": "READ"})["id"]
    assert "_abaco_actor_id=" + x in users.run("alice", x)  # an execution, logs and a worker exist
    mine = new_actor(users, "tb_admin")

    for path in (f"/actors/{x}", f"/actors/{x}/executions", f"/actors/{x}/nonces", f"/actors/{x}/nonces/{nonce}",
                 f"/actors/{x}/workers", f"/actors/{x}/permissions", "/actors/aliases/dev-only",
                 "/actors/configs/dev_cfg"):
        assert users.call("tb_admin", "GET", path).status_code == 404, path
    assert users.call("tb_admin", "POST", f"/actors/{x}/messages", data={"message": "x"}).status_code == 404
    assert users.call("tb_admin", "POST", f"/actors/{x}/workers", data={"num": 2}).status_code == 404
    assert x not in str(users.ok("tb_admin", "GET", "/actors"))
    assert "dev-only" not in str(users.ok("tb_admin", "GET", "/actors/aliases"))
    assert "dev_cfg" not in str(users.ok("tb_admin", "GET", "/actors/configs"))
    for kind in ("actors", "executions", "workers", "logs"):
        assert x not in str(users.ok("tb_admin", "GET", f"/actors/search/{kind}")), kind
    admin_actors = users.ok("tb_admin", "GET", "/actors/admin")
    assert [a["id"] for a in admin_actors] == [mine] and {a["tenant"] for a in admin_actors} == {"TB"}
    workers = users.ok("tb_admin", "GET", "/actors/admin/workers")["workers"]
    assert all(w["actor_id"] == mine for w in workers) and x not in str(workers)
    summary = users.ok("tb_admin", "GET", "/actors/admin/executions")
    assert [a["actor_id"] for a in summary["actors"]] == [mine]
    assert summary["summary"]["total_executions_all"] == 0
    assert users.ok("tb_admin", "GET", "/actors/utilization")["currentActors"] == 1
    r = users.call("tb_admin", "POST", "/actors/admin/cron")  # a pass fires every tenant's actors
    assert r.status_code == 400 and "instance owner" in r.json()["message"]

    # the owner still sees every tenant
    owner_view = {a["id"] for a in users.ok("owner", "GET", "/actors/admin")}
    assert {x, mine} <= owner_view
    assert users.ok("owner", "GET", "/actors/utilization")["currentActors"] >= 2
    assert {x, mine} <= {a["actor_id"] for a in users.ok("owner", "GET", "/actors/admin/executions")["actors"]}
    assert users.ok("owner", "POST", "/actors/admin/cron")["executions"] >= 0
