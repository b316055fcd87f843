"""Aliases and nonces through the app: Abaco's v3 test_aliases / test_nonces flows and messages."""

from __future__ import annotations

import threading

import pytest

from lightabaco.sharing import nonces
from lightabaco.protocol.errors import AbacoError


def res(r):
    assert r.status_code == 200, r.text
    return r.json()["result"]


def test_alias_flow_between_two_users(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    owner = sharing_client.env.owner.username
    made = res(c.post("/actors/aliases", data={"alias": "jane", "actor_id": aid}, headers=h("owner")))
    assert made["alias"] == "jane" and made["actor_id"] == aid and made["owner"] == owner
    r = c.post("/actors/aliases", data={"alias": "jane", "actor_id": aid}, headers=h("owner"))
    assert r.status_code == 400 and "already exists" in r.json()["message"]
    assert [a["alias"] for a in res(c.get("/actors/aliases", headers=h("owner")))] == ["jane"]
    assert res(c.get("/actors/aliases/jane/permissions", headers=h("owner"))) == {owner: "UPDATE"}
    # an alias works wherever an actor id does, and links show the real id
    assert res(c.get("/actors/jane", headers=h("owner")))["id"] == aid
    assert aid in res(c.get("/actors/jane/messages", headers=h("owner")))["_links"]["self"]
    assert aid in res(c.get("/v3/actors/jane/executions", headers=h("owner")))["_links"]["self"]

    r = c.get("/actors/aliases/jane", headers=h("priv"))
    assert r.status_code == 400 and "you do not have access to this alias" in r.json()["message"]
    res(c.post("/actors/aliases/jane/permissions", data={"user": "priv", "level": "UPDATE"}, headers=h("owner")))
    assert res(c.get("/actors/aliases/jane", headers=h("priv")))["alias"] == "jane"
    r = c.get("/actors/jane", headers=h("priv"))
    assert r.status_code == 400 and "you do not have access to this actor" in r.json()["message"]
    r = c.put("/actors/aliases/jane", data={"actor_id": aid}, headers=h("priv"))
    assert r.status_code == 400 and ("you do not have UPDATE access to the actor you want to associate with this "
                                     "alias") in r.json()["message"]
    r = c.get("/actors/aliases/jane/nonces", headers=h("priv"))
    assert r.status_code == 400 and "you do not have access to this alias and actor" in r.json()["message"]
    # repointing
    other = sharing_client.create_actor("owner")
    assert res(c.put("/actors/aliases/jane", data={"actor_id": other}, headers=h("owner")))["actor_id"] == other
    assert res(c.get("/actors/jane", headers=h("owner")))["id"] == other
    r = c.put("/actors/aliases/jane", data={"actor_id": aid, "alias": "x"}, headers=h("owner"))
    assert r.status_code == 400 and "cannot be updated in a PUT" in r.json()["message"]
    # the other user may delete the alias they hold UPDATE on
    res(c.delete("/actors/aliases/jane", headers=h("priv")))
    assert res(c.get("/actors/aliases", headers=h("owner"))) == []
    assert c.get("/actors/jane", headers=h("owner")).status_code == 404


@pytest.mark.parametrize("alias, status, text", [
    ("executions", 400, "is a reserved word"),
    ("search", 400, "is a reserved word"),
    ("a b", 400, "' ' is a forbidden character"),
    ("what?", 400, "'?' is a forbidden character"),
    ("dots.in.my.name.alias", 200, ""),
])
def test_alias_names(sharing_client, alias, status, text):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    r = c.post("/actors/aliases", data={"alias": alias, "actor_id": aid}, headers=h("owner"))
    assert r.status_code == status and text in r.json()["message"]
    if status == 200:
        assert res(c.get(f"/actors/{alias}", headers=h("owner")))["id"] == aid


def test_alias_refusals(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    r = c.post("/actors/aliases", data={"alias": aid, "actor_id": aid}, headers=h("owner"))
    assert r.status_code == 400 and r.json()["message"] == "Invalid alias description. Alias cannot be an Abaco hash id."
    r = c.post("/actors/aliases", data={"alias": "ghost", "actor_id": "Q1LqzbGGW5jq7"}, headers=h("owner"))
    assert r.status_code == 404 and r.json()["message"] == "No actor found with id: Q1LqzbGGW5jq7."
    r = c.post("/actors/aliases", data={"alias": "mine", "actor_id": aid}, headers=h("regular"))
    assert r.status_code == 400 and f"you do not have access to {aid}" in r.json()["message"]
    r = c.post("/actors/aliases", data={"alias": "mine"}, headers=h("owner"))
    assert r.status_code == 400 and "actor_id" in r.json()["message"]
    assert c.get("/actors/aliases/nope", headers=h("owner")).json()["message"] == "No alias found: nope."


def test_actor_nonce_defaults_and_redemption(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    assert res(c.get(f"/actors/{aid}/nonces", headers=h("owner"))) == []
    n = res(c.post(f"/actors/{aid}/nonces", headers=h("owner")))
    assert (n["level"], n["max_uses"], n["current_uses"], n["remaining_uses"]) == ("EXECUTE", -1, 0, -1)
    assert n["id"].startswith("DEV_") and n["actor_id"] == aid and "alias" not in n
    assert n["roles"] and n["api_server"] and n["create_time"] and n["last_use_time"] == "None"
    nid = n["id"]
    for path in (f"/actors/{aid}", f"/actors/{aid}/executions", f"/actors/{aid}/messages"):
        assert c.get(f"{path}?x-nonce={nid}").status_code == 200, path
    got = res(c.get(f"/actors/{aid}/nonces/{nid}", headers=h("owner")))
    assert (got["current_uses"], got["remaining_uses"]) == (3, -1) and got["last_use_time"] != "None"
    r = c.post(f"/actors/{aid}/messages?x-nonce={nid}", data={"message": "test"})
    assert r.status_code == 200
    assert res(c.get(f"/actors/{aid}/nonces/{nid}", headers=h("owner")))["current_uses"] == 4
    # EXECUTE is not UPDATE
    r = c.put(f"/actors/{aid}?x-nonce={nid}", data={"image": "x"})
    assert r.status_code == 400 and r.json()["message"] == "Nonce does not have sufficient permissions level."
    # the nonce belongs to this actor only
    other = sharing_client.create_actor("owner")
    r = c.get(f"/actors/{other}?x-nonce={nid}")
    assert r.status_code == 400 and r.json()["message"] == "Nonce does not exist."
    r = c.get(f"/actors/search/actors?x-nonce={nid}")
    assert r.status_code == 404 and "does not resolve" in r.json()["message"]
    # a nonce cannot reveal other (possibly stronger) nonces
    r = c.get(f"/actors/{aid}/nonces?x-nonce={nid}")
    assert r.status_code == 400 and r.json()["message"] == "Nonce does not have sufficient permissions level."
    assert c.put(f"/actors/{aid}/nonces", headers=h("owner")).status_code == 405
    assert c.post(f"/actors/{aid}/nonces/{nid}", headers=h("owner")).status_code == 405
    res(c.delete(f"/actors/{aid}/nonces/{nid}", headers=h("owner")))
    r = c.get(f"/actors/{aid}?x-nonce={nid}")
    assert r.status_code == 400 and r.json()["message"] == "Nonce does not exist."


def test_limited_nonce(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    n = res(c.post(f"/actors/{aid}/nonces", data={"max_uses": 3, "level": "READ"}, headers=h("owner")))
    assert (n["level"], n["max_uses"], n["current_uses"], n["remaining_uses"]) == ("READ", 3, 0, 3)
    nid = n["id"]
    assert c.get(f"/actors/{aid}?x-nonce={nid}").status_code == 200
    got = res(c.get(f"/actors/{aid}/nonces/{nid}", headers=h("owner")))
    assert (got["current_uses"], got["remaining_uses"]) == (1, 2)
    assert c.post(f"/actors/{aid}/messages?x-nonce={nid}", data={"message": "x"}).status_code == 400
    assert c.get(f"/actors/{aid}?x-nonce={nid}").status_code == 200
    assert c.get(f"/actors/{aid}?x-nonce={nid}").status_code == 200
    r = c.get(f"/actors/{aid}?x-nonce={nid}")
    assert r.status_code == 400 and r.json()["message"] == "No remaining uses left for this nonce."
    got = res(c.get(f"/actors/{aid}/nonces/{nid}", headers=h("owner")))
    assert (got["current_uses"], got["remaining_uses"]) == (3, 0)
    assert len(res(c.get(f"/actors/{aid}/nonces", headers=h("owner")))) == 1


@pytest.mark.parametrize("data, text", [
    ({"max_uses": 0}, "must be a positive integer or -1"),
    ({"max_uses": -5}, "must be a positive integer or -1"),
    ({"max_uses": "many"}, "must be an integer"),
    ({"level": "BOGUS"}, "The level attribute must be one of"),
])
def test_nonce_validation(sharing_client, data, text):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    r = c.post(f"/actors/{aid}/nonces", data=data, headers=h("owner"))
    assert r.status_code == 400 and text in r.json()["message"]


def test_alias_nonce(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    res(c.post("/actors/aliases", data={"alias": "jane", "actor_id": aid}, headers=h("owner")))
    n = res(c.post("/actors/aliases/jane/nonces", headers=h("owner")))
    assert n["alias"] == "jane" and n["actor_id"] is None and n["level"] == "EXECUTE" and n["max_uses"] == -1
    assert c.get(f"/actors/jane?x-nonce={n['id']}").status_code == 200
    assert c.get(f"/actors/aliases/jane?x-nonce={n['id']}").status_code == 200
    # an alias nonce is not valid on the actor id itself
    assert c.get(f"/actors/{aid}?x-nonce={n['id']}").status_code == 400
    r = c.post("/actors/aliases/jane/nonces", data={"level": "UPDATE"}, headers=h("owner"))
    assert r.status_code == 400 and "The level attribute must be one of" in r.json()["message"]
    assert len(res(c.get("/actors/aliases/jane/nonces", headers=h("owner")))) == 1


def test_nonce_use_counts_are_exact_under_concurrency(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner)
    made = nonces.create_actor_nonce(sharing_env.services, sharing_env.owner, actor.dbid,
                                     {"max_uses": "7", "level": "READ"})
    ok, refused = [], []
    barrier = threading.Barrier(20)

    def redeem() -> None:
        barrier.wait()
        try:
            nonces.redeem(made["id"], actor_dbid=actor.dbid, alias=None, level=1)
            ok.append(1)
        except AbacoError as exc:
            refused.append(exc.message)

    threads = [threading.Thread(target=redeem) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 7 and len(refused) == 13
    assert set(refused) == {"No remaining uses left for this nonce."}
    shown = nonces.get_actor_nonce(sharing_env.services, sharing_env.owner, actor.dbid, made["id"])
    assert (shown["current_uses"], shown["remaining_uses"]) == (7, 0)


def test_concurrent_sharing_writes_do_not_hit_database_locked(sharing_env):
    """Read-then-write transactions take SQLite's write lock up front; concurrent writers just queue."""
    from lightabaco.sharing import aliases, configs, permissions

    actor = sharing_env.make_actor(sharing_env.owner)
    errors: list[BaseException] = []
    barrier = threading.Barrier(12)

    def work(i: int) -> None:
        barrier.wait()
        try:
            aliases.create_alias(sharing_env.services, sharing_env.owner, {"alias": f"a{i}", "actor_id": actor.id})
            configs.create_config(sharing_env.services, sharing_env.owner,
                                  {"name": f"c{i}", "value": "v", "is_secret": "false", "actors": actor.id})
            permissions.set_permission(permissions.ACTOR, actor.dbid, f"user{i}", "READ")
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(aliases.list_aliases(sharing_env.services, sharing_env.owner)) == 12
    assert len(permissions.permissions_dict(permissions.ACTOR, actor.dbid)) == 13


def test_nonce_ids_are_random_hashids():
    from lightabaco.ids import is_hashid

    made = {nonces.new_nonce_hash() for _ in range(200)}
    assert len(made) == 200 and all(is_hashid(h) and "_" not in h for h in made)
