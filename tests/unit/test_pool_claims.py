"""The shared pool's claim (issue 9): worker rows are slots, any pool process serves any actor."""

from __future__ import annotations

import time
from pathlib import Path

from lightabaco.abaco import actors, messages
from lightabaco.store import mailbox
from lightabaco.store.models import Actor, Execution, Message, Worker
from lightabaco.workers import claims
from lightabaco.workers.supervisor import recover_on_start

LOGS = Path("/tmp")


def make_actor(env, name: str, slots: int = 1, **fields):
    s, admin = env.services, env.admin()
    a = actors.create_actor(s, admin, {"image": "img", "name": name, **fields})
    dbid = Actor.get(Actor.id == a["id"]).dbid
    have = Worker.select().where(Worker.actor_dbid == dbid).count()
    actor = Actor.get(Actor.dbid == dbid)
    from lightabaco.abaco import workers as records

    for _ in range(slots - have):
        records.request_worker(s, actor)
    Worker.update(status="READY").where(Worker.actor_dbid == dbid).execute()
    return a, dbid


def send(env, a, text: str):
    return messages.send_message(env.services, env.admin(), a["id"], text, messages.STR, {})


def test_any_actor_oldest_message_first(service_env):
    a, adb = make_actor(service_env, "a")
    b, bdb = make_actor(service_env, "b")
    first = send(service_env, b, "1")
    send(service_env, a, "2")
    got = claims.claim_any("h1", 30, LOGS)
    assert got is not None and got[1].dbid == bdb and got[0].execution_id == first.execution_id
    ex = Execution.get(Execution.id == first.execution_id)
    assert ex.status == "RUNNING" and ex.worker_id == got[2] and ex.host == "h1"
    slot = Worker.get(Worker.id == got[2])
    assert slot.status == "BUSY" and slot.host_id == "h1"
    got2 = claims.claim_any("h1", 30, LOGS)
    assert got2 is not None and got2[1].dbid == adb


def test_an_actor_runs_at_most_as_many_messages_as_it_has_slots(service_env):
    a, adb = make_actor(service_env, "a", slots=2)
    for i in range(3):
        send(service_env, a, str(i))
    assert claims.claim_any("h", 30, LOGS) is not None
    assert claims.claim_any("h", 30, LOGS) is not None
    assert claims.claim_any("h", 30, LOGS) is None  # both slots BUSY: the third waits
    assert mailbox.count(adb) == 1
    assert Worker.select().where(Worker.status == "BUSY").count() == 2


def test_actors_in_error_and_stale_slots_are_not_claimed(service_env):
    a, adb = make_actor(service_env, "a")
    b, bdb = make_actor(service_env, "b")
    send(service_env, a, "x")
    send(service_env, b, "y")
    Actor.update(status="ERROR").where(Actor.dbid == adb).execute()
    Actor.update(revision=Actor.revision + 1).where(Actor.dbid == bdb).execute()  # slots of the old revision
    assert claims.claim_any("h", 30, LOGS) is None
    assert mailbox.count(adb) == 1 and mailbox.count(bdb) == 1


def test_stateful_actor_strict_fifo_with_two_slots(service_env):
    a, adb = make_actor(service_env, "s", slots=2, stateless=False)
    first = send(service_env, a, "1")
    send(service_env, a, "2")
    got = claims.claim_any("h", 30, LOGS)
    assert got is not None and got[0].execution_id == first.execution_id
    assert claims.claim_any("h", 30, LOGS) is None  # the second waits for the first, whatever the slots
    assert Worker.select().where(Worker.status == "BUSY").count() == 1


def test_skip_leaves_an_actor_to_other_hosts(service_env):
    a, adb = make_actor(service_env, "a")
    send(service_env, a, "1")
    assert claims.claim_any("h", 30, LOGS, skip={adb}) is None
    got = claims.claim_any("h", 30, LOGS)
    assert got is not None
    claims.give_back(got[0], adb, got[2])
    assert mailbox.count(adb) == 1 and Message.get().attempts == 0
    assert Worker.get().status == "READY" and Execution.get().status == "SUBMITTED"


def test_slots_of_a_dead_host_are_freed_after_their_lease(service_env):
    a, adb = make_actor(service_env, "a")
    send(service_env, a, "1")
    got = claims.claim_any("gone-host", 30, LOGS)
    assert got is not None
    assert claims.free_stale_slots(30) == 0  # fresh claim with its lease: untouched
    Message.update(lease_until=time.time() - 1).execute()
    mailbox.release_expired()
    assert claims.free_stale_slots(30, now=time.time() + 31) == 1
    assert Worker.get().status == "READY"
    assert claims.claim_any("h2", 30, LOGS) is not None  # the message runs elsewhere


def test_restart_keeps_slots_and_frees_busy_ones(service_env):
    a, adb = make_actor(service_env, "a", slots=2)
    send(service_env, a, "1")
    assert claims.claim_any("h", 30, LOGS) is not None
    info = recover_on_start(max_attempts=3, host="h")
    assert info["worker_rows"] == 1 and info["requeued"] == 1
    assert [w.status for w in Worker.select()] == ["READY", "READY"]  # never evicted: rows stay


def test_housekeeping_expires_old_executions_with_their_logs_and_results(service_env):
    from lightabaco.abaco import housekeeping
    from lightabaco.store.models import Log, Result

    s = service_env.services
    a, adb = make_actor(service_env, "h")
    old, fresh, running = (send(service_env, a, t) for t in ("old", "fresh", "running"))
    now = time.time()
    keep = s.settings.execution_retention_s
    Execution.update(status="COMPLETE", finish_time=now - keep - 10).where(
        Execution.id == old.execution_id).execute()
    Execution.update(status="COMPLETE", finish_time=now - 10).where(Execution.id == fresh.execution_id).execute()
    Execution.update(status="RUNNING", start_time=now - keep - 100).where(
        Execution.id == running.execution_id).execute()
    for e in (old, fresh):
        Log.insert(execution_dbid=e.execution_dbid, actor_dbid=adb, text="x", expires=None).execute()
        Result.insert(execution_dbid=e.execution_dbid, data=b"r", created=now).execute()
    out = housekeeping.run(s, now=now)
    assert out["executions"] == 1
    left = {e.id for e in Execution.select()}
    assert left == {fresh.execution_id, running.execution_id}  # a running one is never expired
    assert {l.execution_dbid for l in Log.select()} == {fresh.execution_dbid}
    assert {r.execution_dbid for r in Result.select()} == {fresh.execution_dbid}
    s.settings.execution_retention_s = 0  # 0 keeps everything
    Execution.update(finish_time=0).where(Execution.id == fresh.execution_id).execute()
    assert housekeeping.run(s, now=now)["executions"] == 0
