"""The claim of the shared pool: a free runner process takes the oldest message of any actor that has
a free worker slot (issue 9).

An actor's workers are rows (Abaco's worker records); a row in READY is a free concurrency slot of that
actor, BUSY a slot in use. A claim moves one slot READY -> BUSY, leases the actor's next message to the
slot's id (executions keep showing Abaco's worker id) and marks the execution RUNNING, in one write
transaction. The lease is what makes delivery at-least-once: a process that dies stops renewing it and
the message returns to the queue. A stateful actor has one slot, so its messages run one at a time in
order (the mailbox's own guard keeps it so even with more slots).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Collection

from lightabaco.store import fast, mailbox
from lightabaco.store.db import database, write_tx
from lightabaco.store.mailbox import Claimed
from lightabaco.store.models import Actor, Execution, Worker

CANDIDATES = 16  # messages looked at per claim: enough to step over actors whose slots are all busy

# A read (no write lock): the oldest waiting messages whose actor can run now and has a free slot of its
# current revision. Actors in ERROR keep their messages queued (Abaco) but are never claimed.
_CANDIDATES_SQL = """
SELECT m."actor_dbid", w."dbid", w."id"
FROM "message" m
JOIN "actor" a ON a."dbid" = m."actor_dbid"
JOIN "worker" w ON w."actor_dbid" = m."actor_dbid" AND w."status" = 'READY' AND w."revision" = a."revision"
WHERE m."lease_owner" IS NULL AND a."status" NOT IN ('ERROR', 'SHUTTING_DOWN')
ORDER BY m."id" LIMIT ?
"""


def candidates(limit: int = CANDIDATES) -> list[tuple[str, str, str]]:
    """(actor dbid, slot dbid, slot id), oldest message first, one free slot per actor."""
    rows = database.execute_sql(fast.placeholders(_CANDIDATES_SQL), (limit,)).fetchall()
    seen: set[str] = set()
    out = []
    for actor_dbid, slot_dbid, slot_id in rows:
        if actor_dbid not in seen:
            seen.add(actor_dbid)
            out.append((actor_dbid, slot_dbid, slot_id))
    return out


def claim_any(host: str, lease_s: float, log_dir: Path,
              skip: Collection[str] = ()) -> tuple[Claimed, Actor, str] | None:
    """Claim the oldest runnable message of any actor for this process. Returns (message, actor, slot
    id), or None when nothing can run now. `skip`: actor dbids this process cannot serve for a while
    (an image it lacks)."""
    for actor_dbid, slot_dbid, slot_id in candidates():
        if actor_dbid in skip:
            continue
        got = _claim_for(actor_dbid, slot_dbid, slot_id, host, lease_s, log_dir)
        if got is not None:
            return got
    return None


def _claim_for(actor_dbid: str, slot_dbid: str, slot_id: str, host: str, lease_s: float,
               log_dir: Path) -> tuple[Claimed, Actor, str] | None:
    now = time.time()
    with write_tx():
        actor = fast.get_one(Actor, "dbid", actor_dbid)
        if actor is None or actor.status in ("SHUTTING_DOWN", "ERROR"):
            return None
        # The slot first: two processes that picked the same slot cannot both move it (the second
        # changes no row, on SQLite under the write lock, on PostgreSQL after the first commits).
        took = Worker.update(status="BUSY", pid=os.getpid(), cid=str(os.getpid()), host_id=host,
                             last_health_check_time=now).where(
            (Worker.dbid == slot_dbid) & (Worker.status == "READY")
            & (Worker.revision == actor.revision)).execute()
        if not took:
            return None
        claimed = mailbox.claim(actor_dbid, slot_id, lease_s, now)
        if claimed is None:  # taken by another process meanwhile (or a stateful actor's turn is busy)
            Worker.update(status="READY").where(Worker.dbid == slot_dbid).execute()
            return None
        fast.update(Execution, {"dbid": f"{actor_dbid}_{claimed.execution_id}"}, status="RUNNING",
                    worker_id=slot_id, start_time=now, attempts=claimed.attempts, host=host,
                    live_log_path=str(log_dir / f"{claimed.execution_id}.log"))
    return claimed, actor, slot_id


def give_back(claimed: Claimed, actor_dbid: str, slot_id: str) -> None:
    """This process cannot run a message it claimed (no image here): it goes back to the queue
    unchanged (not counted as a delivery) and the slot is free again."""
    with write_tx():
        Execution.update(status="SUBMITTED", live_log_path=None, host=None).where(
            Execution.dbid == f"{actor_dbid}_{claimed.execution_id}").execute()
        mailbox.nack(claimed.id, slot_id, count_attempt=False)
        Worker.update(status="READY").where((Worker.id == slot_id) & (Worker.actor_dbid == actor_dbid)
                                            & (Worker.status == "BUSY")).execute()


_STALE_BUSY_SQL = """
UPDATE "worker" SET "status" = 'READY'
WHERE "status" = 'BUSY' AND "last_health_check_time" < ?
  AND NOT EXISTS (SELECT 1 FROM "message" x WHERE x."lease_owner" = "worker"."id")
"""


def free_stale_slots(lease_s: float, now: float | None = None) -> int:
    """BUSY slots that hold no lease any more (their process or host died and the lease expired, or
    was returned) are free again. Only slots claimed longer than a lease ago: a claim that is being
    committed right now is never touched."""
    now = time.time() if now is None else now
    with write_tx():
        return database.execute_sql(fast.placeholders(_STALE_BUSY_SQL), (now - lease_s,)).rowcount
