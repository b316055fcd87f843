"""Search (spec §2.11): scoping per user, Abaco's operators and value typing, paging, camel mode."""

from __future__ import annotations

import datetime as dt

import pytest

from lightabaco import ids
from lightabaco.queries import search
from lightabaco.protocol.errors import AbacoError
from lightabaco.store.models import Execution, Log, Worker

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp()


def add_execution(actor, executor: str, n: int) -> None:
    eid = ids.new_id()
    Execution.create(dbid=ids.dbid(actor.dbid, eid), id=eid, actor_dbid=actor.dbid, tenant=actor.tenant,
                     executor=executor, status="COMPLETE", message_received_time=T0 + n, start_time=T0 + n + 1,
                     finish_time=T0 + n + 2, runtime=1, cpu=10, io=5, exit_code=0,
                     final_state={"ExitCode": 0, "StartedAt": "2026-11-01T12:00:01.000Z"})
    Log.create(execution_dbid=ids.dbid(actor.dbid, eid), actor_dbid=actor.dbid, text=f"Contents of MSG: {n}")


@pytest.fixture
def world(sharing_env):
    admin = sharing_env.owner
    priv = sharing_env.user("priv", "privileged")
    regular = sharing_env.user("regular")
    a1 = sharing_env.make_actor(admin, image="jstubbs/abaco_test", name="search_admin_actor_1", stateless=False,
                                token="false")
    a2 = sharing_env.make_actor(admin, image="abacosamples/sleep_loop", name="search_admin_actor_2")
    p1 = sharing_env.make_actor(priv, image="jstubbs/abaco_test", name="search_privileged_actor_1")
    sharing_env.make_actor(regular, image="jstubbs/abaco_test", name="search_regular_actor_1")
    for n in range(2):
        add_execution(a1, admin.username, n)
    for n in range(3):
        add_execution(p1, "priv", n)
    Worker.create(dbid=ids.dbid(a1.dbid, "w1"), id="w1", actor_dbid=a1.dbid, tenant="DEV", status="READY",
                  create_time=T0)
    return sharing_env, {"admin": admin, "priv": priv, "regular": regular}, (a1, a2)


def count(env, who, kind, **params) -> dict:
    return search.search(env.services, who, kind, params)["_metadata"]


def test_scoping_per_user(world):
    env, users, _ = world
    expected = {"admin": (2, 2, 2), "priv": (3, 3, 1), "regular": (0, 0, 1)}
    for name, (logs, executions, actors) in expected.items():
        who = users[name]
        assert count(env, who, "logs")["total_count"] == logs, name
        assert count(env, who, "executions")["total_count"] == executions, name
        assert count(env, who, "actors")["total_count"] == actors, name
    assert count(env, users["admin"], "executions") == {"total_count": 2, "records_skipped": 0,
                                                        "record_limit": 100, "count_returned": 2}


def test_item_shapes(world):
    env, users, _ = world
    actor = search.search(env.services, users["admin"], "actors", {})["search"][0]
    assert actor["token"] == "false"
    assert {"_links", "description", "gid", "hints", "link", "mounts", "name", "owner", "privileged",
            "status"} <= set(actor)
    assert not {"_id", "permissions", "api_server", "executions", "tenant", "db_id", "dbid"} & set(actor)
    execution = search.search(env.services, users["admin"], "executions", {})["search"][0]
    assert {"_links", "executor", "id", "io", "runtime", "status"} <= set(execution)
    assert not {"api_server", "tenant"} & set(execution)
    assert execution["start_time"].endswith("Z")
    log = search.search(env.services, users["admin"], "logs", {})["search"][0]
    assert {"_links", "logs"} <= set(log) and not {"exp", "actor_id", "tenant"} & set(log)
    worker = search.search(env.services, users["admin"], "workers", {})["search"][0]
    assert worker["id"] == "w1" and worker["status"] == "READY"


@pytest.mark.parametrize("kind, params, total", [
    ("executions", {"final_state.StartedAt.gt": "2000-05:00"}, 2),
    ("executions", {"final_state.StartedAt.gt": "2000-01-01T01:00:00.000Z"}, 2),
    ("executions", {"final_state.StartedAt.lt": "2000-01-01T01:00"}, 0),
    ("executions", {"message_received_time.between": "2000-01-01T01:00,2200-12-30T23:59:59.999Z"}, 2),
    ("executions", {"message_received_time.between": "2026-11-01T12:00:00.5Z,2026-11-01T12:00:01.5Z"}, 1),
    ("actors", {"create_time.between": "2000-01-01,2200-01-01"}, 2),
    ("actors", {"exactsearch": "jstubbs/abaco_test"}, 1),
    ("actors", {"exactsearch": "NOTATHINGWORD"}, 0),
    ("executions", {"status.in": '["COMPLETE", "READY"]'}, 2),
    ("executions", {"status.in": "['COMPLETE', 'READY']"}, 2),
    ("executions", {"status.nin": '["COMPLETE", "READY"]'}, 0),
    ("actors", {"image": "abacosamples/sleep_loop"}, 1),
    ("actors", {"image.neq": "abacosamples/sleep_loop"}, 1),
    ("actors", {"image.like": "sleep_loop"}, 1),
    ("actors", {"image.nlike": "sleep_loop"}, 1),
    ("actors", {"stateless": "false"}, 1),
    ("actors", {"maxWorkers": "none"}, 2),
    ("executions", {"runtime.gte": "1", "cpu.lt": "11"}, 2),
    ("executions", {"io.gt": "5"}, 0),
    ("logs", {"search": "MSG"}, 2),
    ("actors", {"x-nonce": "ignored"}, 2),
])
def test_operators(world, kind, params, total):
    env, users, _ = world
    assert count(env, users["admin"], kind, **params)["total_count"] == total


def test_full_text_search_ranks_and_paging(world):
    env, users, _ = world
    found = search.search(env.services, users["admin"], "actors", {"search": "sleep_loop"})
    assert found["search"][0]["image"] == "abacosamples/sleep_loop"
    assert count(env, users["admin"], "actors", skip="1", limit="23") == {
        "total_count": 2, "records_skipped": 1, "record_limit": 23, "count_returned": 1}


def test_actor_scoped_list_mode(world):
    env, users, (a1, a2) = world
    assert search.search(env.services, users["admin"], "executions", {"limit": "5"}, actor=a2)[
        "_metadata"]["total_count"] == 0
    assert search.search(env.services, users["admin"], "executions", {"limit": "5"}, actor=a1)[
        "_metadata"]["total_count"] == 2
    # someone else's actor yields nothing even if asked for directly
    assert search.search(env.services, users["regular"], "executions", {}, actor=a1)["_metadata"][
        "total_count"] == 0


def test_camel_mode(world):
    env, users, _ = world
    env.services.settings.case = "camel"
    try:
        found = search.search(env.services, users["admin"], "executions", {})
    finally:
        env.services.settings.case = "snake"
    assert set(found["_metadata"]) == {"totalCount", "recordsSkipped", "recordLimit", "countReturned"}
    assert "messageReceivedTime" in found["search"][0]


@pytest.mark.parametrize("params", [{"skip": "-1"}, {"limit": "x"},
                                    {"message_received_time.between": "2020"}])
def test_bad_parameters(world, params):
    env, users, _ = world
    with pytest.raises(AbacoError):
        search.search(env.services, users["admin"], "executions", params)


def test_unknown_kind(world):
    env, users, _ = world
    with pytest.raises(AbacoError, match="Unknown search type"):
        search.search(env.services, users["admin"], "nonsense", {})


def test_search_route(sharing_client):
    c, h = sharing_client.client, sharing_client.h
    sharing_client.create_actor("regular", name="findme")
    r = c.get("/actors/search/actors?name=findme", headers=h("regular"))
    assert r.json()["result"]["_metadata"]["total_count"] == 1
    assert c.get("/actors/search/actors?name=findme", headers=h("priv")).json()["result"]["_metadata"][
        "total_count"] == 0
    r = c.get("/actors?limit=1", headers=h("regular"))
    assert set(r.json()["result"]) == {"_metadata", "search"}
