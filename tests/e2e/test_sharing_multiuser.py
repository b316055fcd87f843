"""Several users on one live server (uvicorn, SQLite, bubblewrap): isolation, sharing, nonces under load."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.e2e


def call(srv, who, method, path, **kw):
    return requests.request(method, srv.url + path, headers=srv.headers(who), timeout=60, **kw)


def result(r):
    assert r.status_code == 200, r.text
    return r.json()["result"]


def wait_complete(srv, who, aid, eid, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        ex = result(call(srv, who, "GET", f"/actors/{aid}/executions/{eid}"))
        if ex["status"] in ("COMPLETE", "ERROR"):
            return ex
        assert time.monotonic() < deadline, f"execution {eid} still {ex['status']}"
        time.sleep(0.05)


def test_users_never_see_each_others_work(multiuser_server):
    srv = multiuser_server
    mine = result(call(srv, "regular", "POST", "/actors", data={"image": "lightabaco/result"}))["id"]
    theirs = result(call(srv, "priv", "POST", "/actors", data={"image": "abacosamples/test"}))["id"]
    e_mine = result(call(srv, "regular", "POST", f"/actors/{mine}/messages", data={"message": "a"}))["execution_id"]
    e_theirs = result(call(srv, "priv", "POST", f"/actors/{theirs}/messages",
                           data={"message": "secret"}))["execution_id"]
    assert wait_complete(srv, "regular", mine, e_mine)["status"] == "COMPLETE"
    assert wait_complete(srv, "priv", theirs, e_theirs)["status"] == "COMPLETE"
    assert "secret" in result(call(srv, "priv", "GET", f"/actors/{theirs}/executions/{e_theirs}/logs"))["logs"]

    for path in (f"/actors/{theirs}", f"/actors/{theirs}/executions", f"/actors/{theirs}/executions/{e_theirs}",
                 f"/actors/{theirs}/executions/{e_theirs}/logs", f"/actors/{theirs}/executions/{e_theirs}/results",
                 f"/actors/{theirs}/messages", f"/actors/{theirs}/workers", f"/actors/{theirs}/nonces",
                 f"/actors/{theirs}/permissions"):
        r = call(srv, "regular", "GET", path)
        assert r.status_code == 400 and "you do not have access to this actor" in r.json()["message"], path
        assert r.headers["content-type"] == "application/json"
    assert [a["id"] for a in result(call(srv, "regular", "GET", "/actors"))] == [mine]
    for kind in ("actors", "executions", "logs", "workers"):
        found = result(call(srv, "regular", "GET", f"/actors/search/{kind}"))["search"]
        assert all(theirs not in str(item) for item in found), kind
    assert result(call(srv, "regular", "GET", "/actors/search/logs"))["_metadata"]["total_count"] == 1
    # results pop: the owner gets them, nobody else can take them away
    r = call(srv, "priv", "GET", f"/actors/{mine}/executions/{e_mine}/results")
    assert r.status_code == 400
    r = call(srv, "regular", "GET", f"/actors/{mine}/executions/{e_mine}/results")
    assert r.status_code == 200 and r.content == b"hello"
    # another tenant sees none of it
    assert result(call(srv, "other", "GET", "/actors")) == []
    assert call(srv, "other", "GET", f"/actors/{mine}").status_code == 404


def test_sharing_grants_exactly_the_level(multiuser_server):
    srv = multiuser_server
    aid = result(call(srv, "priv", "POST", "/actors", data={"image": "abacosamples/test"}))["id"]

    def attempts(who):
        return (call(srv, who, "GET", f"/actors/{aid}").status_code,
                call(srv, who, "POST", f"/actors/{aid}/messages", data={"message": "x"}).status_code,
                call(srv, who, "PUT", f"/actors/{aid}", data={"image": "abacosamples/test"}).status_code)

    assert attempts("limited") == (400, 400, 400)
    for level, expected in (("READ", (200, 400, 400)), ("EXECUTE", (200, 200, 400)),
                            ("UPDATE", (200, 200, 200)), ("NONE", (400, 400, 400))):
        result(call(srv, "priv", "POST", f"/actors/{aid}/permissions", data={"user": "limited", "level": level}))
        assert attempts("limited") == expected, level
    assert result(call(srv, "limited", "GET", "/actors")) == []


def test_nonce_use_count_is_exact_under_20_concurrent_redemptions(multiuser_server):
    srv = multiuser_server
    aid = result(call(srv, "regular", "POST", "/actors", data={"image": "abacosamples/test"}))["id"]
    nid = result(call(srv, "regular", "POST", f"/actors/{aid}/nonces", data={"max_uses": 7, "level": "READ"}))["id"]

    def redeem(_):
        return requests.get(f"{srv.url}/actors/{aid}?x-nonce={nid}", timeout=60)

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(redeem, range(20)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 7 + [400] * 13
    assert {r.json()["message"] for r in answers if r.status_code == 400} == {
        "No remaining uses left for this nonce."}
    shown = result(call(srv, "regular", "GET", f"/actors/{aid}/nonces/{nid}"))
    assert (shown["current_uses"], shown["remaining_uses"]) == (7, 0)
    # an unlimited nonce counts exactly too, and executes as its owner
    nid2 = result(call(srv, "regular", "POST", f"/actors/{aid}/nonces"))["id"]

    def send(i):
        return requests.post(f"{srv.url}/actors/{aid}/messages?x-nonce={nid2}", data={"message": f"m{i}"},
                             timeout=60)

    with ThreadPoolExecutor(20) as pool:
        sent = list(pool.map(send, range(20)))
    assert all(r.status_code == 200 for r in sent)
    assert result(call(srv, "regular", "GET", f"/actors/{aid}/nonces/{nid2}"))["current_uses"] == 20
    eid = sent[0].json()["result"]["execution_id"]
    ex = wait_complete(srv, "regular", aid, eid)
    assert ex["executor"] == "regular"
    logs = result(call(srv, "regular", "GET", f"/actors/{aid}/executions/{eid}/logs"))["logs"]
    assert "x-nonce" not in logs and "_abaco_username=regular" in logs


def test_alias_and_config_reach_the_actor(multiuser_server):
    srv = multiuser_server
    aid = result(call(srv, "regular", "POST", "/actors", data={"image": "abacosamples/test"}))["id"]
    result(call(srv, "regular", "POST", "/actors/aliases", data={"alias": "class.echo", "actor_id": aid}))
    result(call(srv, "regular", "POST", "/actors/configs",
                json={"name": "greeting", "value": "hello class", "is_secret": False, "actors": "class.echo"}))
    result(call(srv, "regular", "POST", "/actors/configs",
                json={"name": "api_key", "value": "k3y", "is_secret": True, "actors": aid}))
    eid = result(call(srv, "regular", "POST", "/actors/class.echo/messages", data={"message": "hi"}))["execution_id"]
    wait_complete(srv, "regular", aid, eid)
    logs = result(call(srv, "regular", "GET", f"/actors/class.echo/executions/{eid}/logs"))["logs"]
    assert "_actor_configs=" in logs and "'greeting': 'hello class'" in logs and "'api_key': 'k3y'" in logs
    shown = result(call(srv, "regular", "GET", "/actors/configs/api_key"))
    assert shown["value"] != "k3y"
