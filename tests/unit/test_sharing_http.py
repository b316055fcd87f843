"""The authorization matrix (spec §1.10) through the real app in-process, one token per role."""

from __future__ import annotations

import pytest

DENIED = "you do not have access to this actor"


def msg(r) -> str:
    return r.json()["message"]


def test_credentials_are_required(sharing_client):
    c = sharing_client.client
    r = c.get("/actors")
    assert r.status_code == 400 and "No JWT or nonce provided" in msg(r)
    assert r.headers["content-type"] == "application/json"
    r = c.get("/actors", headers={"Authorization": "Bearer nonsense"})
    assert r.status_code == 401 and "lightabaco token" in msg(r)
    r = c.get("/actors", headers={"X-Tapis-Token": sharing_client.tokens["regular"]})
    assert r.status_code == 200
    r = c.options("/actors", headers={"Origin": "http://example.com", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200 and "access-control-allow-origin" in r.headers
    r = c.get("/actors", headers={"X-Jwt-Assertion-DEV-DEVELOP": "x.e30.y"})
    assert r.status_code == 400 and "TRUST_V2_JWT" in msg(r)


def test_each_level_allows_and_refuses_exactly_what_the_matrix_says(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    assert c.get(f"/actors/{aid}/permissions", headers=h("owner")).json()["result"] == \
        {sharing_client.env.owner.username: "UPDATE"}

    def can(who: str) -> dict[str, bool]:
        return {
            "read": c.get(f"/actors/{aid}", headers=h(who)).status_code == 200,
            "executions": c.get(f"/actors/{aid}/executions", headers=h(who)).status_code == 200,
            "execute": c.post(f"/actors/{aid}/messages", data={"message": "hi"}, headers=h(who)).status_code == 200,
            "update": c.put(f"/actors/{aid}", data={"image": "abacosamples/test", "stateless": "true"},
                            headers=h(who)).status_code == 200,
            "nonce": c.post(f"/actors/{aid}/nonces", headers=h(who)).status_code == 200,
        }

    nothing = {"read": False, "executions": False, "execute": False, "update": False, "nonce": False}
    assert can("regular") == nothing
    r = c.get(f"/actors/{aid}", headers=h("regular"))
    assert r.status_code == 400 and DENIED in msg(r)
    expected = {
        "READ": {**nothing, "read": True, "executions": True},
        "EXECUTE": {**nothing, "read": True, "executions": True, "execute": True},
        "UPDATE": {"read": True, "executions": True, "execute": True, "update": True, "nonce": True},
        "NONE": nothing,
    }
    for level, allowed in expected.items():
        r = c.post(f"/actors/{aid}/permissions", data={"user": "regular", "level": level}, headers=h("owner"))
        assert r.status_code == 200 and r.json()["result"]["regular"] == level
        assert can("regular") == allowed, level
    # a user with UPDATE may PUT but the owner stays
    c.post(f"/actors/{aid}/permissions", data={"user": "regular", "level": "UPDATE"}, headers=h("owner"))
    r = c.put(f"/actors/{aid}", data={"image": "abacosamples/test2"}, headers=h("regular"))
    assert r.json()["result"]["owner"] == sharing_client.env.owner.username
    # only UPDATE holders may grant
    r = c.post(f"/actors/{aid}/permissions", data={"user": "priv", "level": "READ"}, headers=h("limited"))
    assert r.status_code == 400
    r = c.post(f"/actors/{aid}/permissions", data={"user": "regular", "level": "BOGUS"}, headers=h("owner"))
    assert r.status_code == 400 and msg(r) == ("Invalid permission level: BOGUS. The valid values are "
                                               "('NONE', 'READ', 'EXECUTE', 'UPDATE')")
    assert c.put(f"/actors/{aid}/permissions", headers=h("owner")).status_code == 405


def test_world_permission_and_lists(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    mine = sharing_client.create_actor("regular")
    theirs = sharing_client.create_actor("priv")
    assert [a["id"] for a in c.get("/actors", headers=h("regular")).json()["result"]] == [mine]
    assert c.get(f"/actors/{theirs}", headers=h("regular")).status_code == 400
    c.post(f"/actors/{theirs}/permissions", data={"user": "ABACO_WORLD", "level": "READ"}, headers=h("priv"))
    assert c.get(f"/actors/{theirs}", headers=h("regular")).status_code == 200
    assert c.get(f"/actors/{theirs}", headers=h("limited")).status_code == 200
    assert c.post(f"/actors/{theirs}/messages", data={"message": "x"}, headers=h("limited")).status_code == 400
    listed = {a["id"] for a in c.get("/actors", headers=h("regular")).json()["result"]}
    assert listed == {mine, theirs}


def test_tenants_are_invisible_to_each_other(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    assert c.get("/actors", headers=h("other")).json()["result"] == []
    r = c.get(f"/actors/{aid}", headers=h("other"))
    assert r.status_code == 404
    theirs = sharing_client.create_actor("other")
    assert [a["id"] for a in c.get("/actors", headers=h("other")).json()["result"]] == [theirs]
    assert theirs not in {a["id"] for a in c.get("/actors", headers=h("owner")).json()["result"]}
    # even an admin of DEV addresses DEV only
    assert c.get(f"/actors/{theirs}", headers=h("admin")).status_code == 404
    assert c.get("/actors/search/executions", headers=h("other")).json()["result"]["_metadata"]["total_count"] == 0


@pytest.mark.parametrize("field, value, text", [
    ("max_workers", 3, "can set max workers"),
    ("max_cpus", 3000000000, "can set max CPUs"),
    ("mem_limit", "3g", "can set mem limit"),
    ("privileged", True, "can make privileged actors"),
    ("queue", "special", "can set queue"),
])
def test_privileged_fields(sharing_client, field, value, text):
    c, h = sharing_client.client, sharing_client.h
    r = c.post("/actors", json={"image": "abacosamples/test", field: value}, headers=h("regular"))
    assert r.status_code == 400 and text in msg(r)
    if field != "queue":
        r = c.post("/actors", json={"image": "abacosamples/test", field: value}, headers=h("priv"))
        assert r.status_code == 200, r.text


def test_admin_routes_need_the_admin_role(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    sharing_client.create_actor("regular")
    for path in ("/actors/admin", "/actors/admin/workers", "/actors/admin/executions", "/actors/admin/users"):
        r = c.get(path, headers=h("regular"))
        assert r.status_code == 400 and msg(r) == "Abaco Admin role required.", path
        assert c.get(path, headers=h("admin")).status_code == 200, path
    util = c.get("/actors/utilization", headers=h("limited")).json()["result"]
    assert set(util) == {"currentActors", "totalActors", "workers", "commandQueue"}
    assert util["currentActors"] == 1
    everyone = c.get("/actors/admin", headers=h("admin")).json()["result"]
    assert len(everyone) == 1 and {"workers", "messages", "executions", "runtime"} <= set(everyone[0])
    summary = c.get("/actors/admin/executions", headers=h("admin")).json()["result"]["summary"]
    assert summary["total_actors_existing"] == 1


def test_admin_users_api_issues_working_tokens(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    r = c.post("/actors/admin/users", json={"username": "student1", "role": "user"}, headers=h("owner"))
    token = r.json()["result"]["token"]
    assert c.get("/actors", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert c.post("/actors/admin/users", json={"username": "x"}, headers=h("priv")).status_code == 400
    names = [u["username"] for u in c.get("/actors/admin/users", headers=h("owner")).json()["result"]]
    assert "student1" in names
    assert c.delete("/actors/admin/users/student1", headers=h("owner")).status_code == 200
    assert c.get("/actors", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    r = c.post("/actors/admin/users/student1", headers=h("owner"))
    fresh = r.json()["result"]["token"]
    assert c.get("/actors", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_camel_case_mode(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    aid = sharing_client.create_actor("owner")
    sharing_client.env.services.settings.case = "camel"
    try:
        n = c.post(f"/actors/{aid}/nonces", json={"maxUses": 2, "level": "READ"}, headers=h("owner")).json()["result"]
        assert (n["maxUses"], n["currentUses"], n["remainingUses"], n["actorId"]) == (2, 0, 2, aid)
        assert "createTime" in n and "lastUseTime" in n and "max_uses" not in n
        a = c.post("/actors/aliases", json={"alias": "camel", "actorId": aid}, headers=h("owner")).json()["result"]
        assert a["actorId"] == aid
        cfg = c.post("/actors/configs", json={"name": "k", "value": "v", "isSecret": False, "actors": aid},
                     headers=h("owner")).json()["result"]
        assert cfg["isSecret"] is False
        perms = c.post(f"/actors/{aid}/permissions", json={"user": "ABACO_WORLD", "level": "READ"},
                       headers=h("owner")).json()["result"]
        assert perms["ABACO_WORLD"] == "READ"  # user names are keys: never converted
        meta = c.get("/actors/search/actors", headers=h("owner")).json()["result"]["_metadata"]
        assert meta["totalCount"] == 1
    finally:
        sharing_client.env.services.settings.case = "snake"
