"""Config bindings by actor identity (and their migration from name matching), and who crosses tenants
(issue 8 items 3 and 9). The live-server attacks are in tests/e2e/test_security_sharing.py."""

from __future__ import annotations

import time

import pytest

from lightabaco.abaco import actors
from lightabaco.sharing import aliases, auth, configs
from lightabaco.protocol.errors import PermissionDenied
from lightabaco.store import db
from lightabaco.store.sharing import ActorConfig, ConfigBinding, SchemaStep


def _delivered(env, actor) -> dict[str, str]:
    return configs.actor_configs_for(env.services, actor.tenant, actor.id)


def test_bindings_follow_the_actor_not_the_name(sharing_env):
    env = sharing_env
    alice, bob = env.user("alice"), env.user("bob")
    x, y = env.make_actor(alice), env.make_actor(bob)
    aliases.create_alias(env.services, alice, {"alias": "pipeline", "actor_id": x.id})
    configs.create_config(env.services, alice, {"name": "s", "value": "hunter2", "is_secret": True,
                                                "actors": "pipeline"})
    assert _delivered(env, x) == {"s": "hunter2"}
    # re-pointing the alias does not move the config: it was attached to x
    z = env.make_actor(alice)
    aliases.update_alias(env.services, alice, "pipeline", {"actor_id": z.id})
    assert _delivered(env, x) == {"s": "hunter2"} and _delivered(env, z) == {}
    # deleting the alias drops the binding; a new alias of that name (another user's) gets nothing
    aliases.delete_alias(env.services, alice, "pipeline")
    assert _delivered(env, x) == {}
    aliases.create_alias(env.services, bob, {"alias": "pipeline", "actor_id": y.id})
    assert _delivered(env, y) == {}
    assert configs.get_config(env.services, alice, "s")["actors"] == "pipeline"  # shown as written


def test_deleting_an_actor_drops_its_bindings(sharing_env):
    env = sharing_env
    alice = env.user("alice")
    x = env.make_actor(alice)
    aliases.create_alias(env.services, alice, {"alias": "a1", "actor_id": x.id})
    configs.create_config(env.services, alice, {"name": "c", "value": "v", "is_secret": False,
                                                "actors": f"{x.id}, a1"})
    assert ConfigBinding.select().count() == 2
    actors.delete_actor(env.services, alice, x.id)
    assert ConfigBinding.select().count() == 0


def test_update_on_every_named_actor_and_alias_is_required(sharing_env):
    from lightabaco.sharing import permissions as perms

    env = sharing_env
    alice, bob = env.user("alice"), env.user("bob")
    x, own = env.make_actor(alice), env.make_actor(bob)
    aliases.create_alias(env.services, alice, {"alias": "ax", "actor_id": x.id})
    perms.set_permission(perms.ALIAS, aliases.alias_key("DEV", "ax"), "bob", "UPDATE")
    for level in ("READ", "EXECUTE"):
        perms.set_permission(perms.ACTOR, x.dbid, "bob", level)
        for named in (x.id, f"{own.id},{x.id}", "ax"):
            with pytest.raises(PermissionDenied):
                configs.create_config(env.services, bob, {"name": "b", "value": "v", "is_secret": False,
                                                          "actors": named})
    # UPDATE on the actor but not on the alias: still refused through the alias, fine by id
    perms.set_permission(perms.ACTOR, x.dbid, "bob", "UPDATE")
    perms.set_permission(perms.ALIAS, aliases.alias_key("DEV", "ax"), "bob", "READ")
    with pytest.raises(PermissionDenied):
        configs.create_config(env.services, bob, {"name": "b", "value": "v", "is_secret": False, "actors": "ax"})
    configs.create_config(env.services, bob, {"name": "b", "value": "v", "is_secret": False, "actors": x.id})
    assert _delivered(env, x) == {"b": "v"}
    # an admin of the tenant passes every check
    configs.create_config(env.services, env.user("root", "admin"),
                          {"name": "adm", "value": "w", "is_secret": False, "actors": "ax"})
    assert _delivered(env, x) == {"b": "v", "adm": "w"}


def _old_database(env):
    """The state a database written before bindings existed is in: configs, no bindings, no marker."""
    alice, bob = env.user("alice"), env.user("bob")
    x, y = env.make_actor(alice), env.make_actor(bob)
    aliases.create_alias(env.services, alice, {"alias": "live", "actor_id": x.id})
    now = time.time()
    for name, named in (("by_id", x.id), ("by_alias", "live"), ("by_gone", "gone"),
                        ("mixed", f"gone, {y.id}")):
        ActorConfig.create(key=f"DEV_{name}", tenant="DEV", name=name, value="v", is_secret=False,
                           actors=named, owner="alice", create_time=now)
    ConfigBinding.delete().execute()
    SchemaStep.delete().execute()
    return alice, bob, x, y


def test_old_name_bindings_are_migrated_once_at_open(sharing_env):
    env = sharing_env
    alice, bob, x, y = _old_database(env)
    assert _delivered(env, x) == {}  # nothing bound until the migration runs
    db.close()
    db.connect(env.services.settings)  # opening the database migrates
    assert _delivered(env, x) == {"by_id": "v", "by_alias": "v"}
    assert _delivered(env, y) == {"mixed": "v"}
    # later, a name that did not resolve is created by someone else: nothing follows it, even when the
    # database is opened again (the migration does not run twice)
    aliases.create_alias(env.services, bob, {"alias": "gone", "actor_id": y.id})
    aliases.delete_alias(env.services, alice, "live")
    aliases.create_alias(env.services, bob, {"alias": "live", "actor_id": y.id})
    db.close()
    db.connect(env.services.settings)
    assert _delivered(env, y) == {"mixed": "v"}
    assert _delivered(env, x) == {"by_id": "v"}
    assert SchemaStep.select().count() == 1


# -- tenants ---------------------------------------------------------------------------------------------


def test_only_the_owner_token_crosses_tenants(sharing_env):
    env = sharing_env
    authn = auth.get_authenticator(env.services)
    assert env.owner.is_owner and env.owner.reaches_tenant("ANY")
    assert authn.owner_identity("none").is_owner  # --auth none: every caller is the owner
    token = auth.add_user(env.home, "boss", "admin", tenant="TB")
    boss = authn.verify_token(token)
    assert boss.is_admin and not boss.is_owner and boss.reaches_tenant("TB") and not boss.reaches_tenant("DEV")
    assert not authn.cached(token).is_owner
    actor_token = auth.mint_actor_token(env.services, env.owner.username, env.owner.tenant, 60)
    assert not authn.verify_token(actor_token).is_owner  # code running in the owner's actor is not the owner


def test_tenant_admin_http_reach(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    env = sharing_client.env
    sharing_client.tokens["tb_admin"] = auth.add_user(env.home, "tb_admin", "admin", tenant="OTHER")
    dev_actor = sharing_client.create_actor("regular")
    tb_actor = sharing_client.create_actor("tb_admin")
    r = c.post("/actors/admin/users", json={"username": "mole", "role": "admin", "tenant": "DEV"},
               headers=h("tb_admin"))
    assert r.status_code == 400 and "instance owner" in r.json()["message"]
    assert c.post("/actors/admin/users/regular?tenant=DEV", headers=h("tb_admin")).status_code == 400
    assert c.delete("/actors/admin/users/regular?tenant=DEV", headers=h("tb_admin")).status_code == 400
    assert c.get("/actors", headers=h("regular")).status_code == 200
    users = c.get("/actors/admin/users", headers=h("tb_admin")).json()["result"]
    assert {u["tenant"] for u in users} == {"OTHER"}
    assert [a["id"] for a in c.get("/actors/admin", headers=h("tb_admin")).json()["result"]] == [tb_actor]
    assert [a["id"] for a in c.get("/actors/admin", headers=h("admin")).json()["result"]] == [dev_actor]
    assert {a["id"] for a in c.get("/actors/admin", headers=h("owner")).json()["result"]} == {dev_actor, tb_actor}
    assert c.get("/actors/utilization", headers=h("tb_admin")).json()["result"]["currentActors"] == 1
    assert c.get("/actors/utilization", headers=h("owner")).json()["result"]["currentActors"] == 2
    assert c.get(f"/actors/{dev_actor}", headers=h("tb_admin")).status_code == 404
    assert c.post("/actors/admin/cron", headers=h("admin")).status_code == 400
    assert c.post("/actors/admin/cron", headers=h("owner")).status_code == 200
    # a tenant admin still makes users in its own tenant
    made = c.post("/actors/admin/users", json={"username": "tb2"}, headers=h("tb_admin")).json()["result"]
    assert made["tenant"] == "OTHER"
