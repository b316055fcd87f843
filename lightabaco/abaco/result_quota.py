"""Result quotas (issue 8, item 10): per execution and per actor owner, in bytes and in count.

Without them one actor stores results at the speed of its socket (100 MiB/s measured, 256 MiB per
execution, kept an hour) and empty datagrams make unlimited rows. Each stored result goes through
`store`: the per-execution caps are checked against a tally the single worker running the execution
keeps (an execution runs in one process at a time; a re-run starts again from zero because the
interrupted run's results are discarded), the per-user caps with one conditional UPDATE of the owner's
`ResultUsage` row in the same transaction as the insert, so several worker processes never overshoot.
Reading a result (`release`) and expiry give the room back; housekeeping recomputes every row from
the `result` table (`reconcile`), so a counter can never drift for longer than one round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import peewee

from lightabaco.store.db import database, write_tx
from lightabaco.store.models import Actor, Execution, Result, ResultUsage

# After the per-user cap refused a result, an execution's later datagrams are dropped without asking
# the database again for this long: a flood of empty datagrams must not turn into a flood of writes.
USER_RETRY_S = 1.0


def owner_key(tenant: str, owner: str) -> str:
    return f"{tenant}/{owner}"


@dataclass
class Tally:
    """One execution's results: what was stored, what was dropped and why."""

    owner: str
    stored_count: int = 0
    stored_bytes: int = 0
    dropped_count: int = 0
    dropped_bytes: int = 0
    reason: str = ""
    _user_blocked_until: float = field(default=0.0, repr=False)

    def drop(self, size: int, reason: str) -> None:
        self.dropped_count += 1
        self.dropped_bytes += size
        if not self.reason:
            self.reason = reason

    def note(self) -> str:
        """The sentence for the execution's final_state and log; "" when nothing was dropped."""
        if not self.dropped_count:
            return ""
        return (f"results quota reached: {self.reason}; {self.dropped_count} result(s) "
                f"({self.dropped_bytes} bytes) were dropped. Read results sooner (GET .../results "
                "removes what it returns), send fewer or smaller ones, or ask the instance owner to "
                "raise the quota.")


def _per_execution_reason(settings: Any, tally: Tally, size: int) -> str:
    max_count = settings.results_max_count_per_execution
    max_bytes = settings.results_max_bytes_per_execution
    if max_count > 0 and tally.stored_count + 1 > max_count:
        return f"an execution may store at most {max_count} results (results_max_count_per_execution)"
    if max_bytes > 0 and tally.stored_bytes + size > max_bytes:
        return f"an execution may store at most {max_bytes} bytes of results (results_max_bytes_per_execution)"
    return ""


def _take_user_room(settings: Any, key: str, size: int) -> bool:
    """Reserve room for one result of `size` bytes in the owner's row (inside the caller's transaction)."""
    max_count = settings.results_max_count_per_user
    max_bytes = settings.results_max_bytes_per_user
    cond = ResultUsage.owner == key
    if max_count > 0:
        cond &= ResultUsage.count + 1 <= max_count
    if max_bytes > 0:
        cond &= ResultUsage.bytes + size <= max_bytes
    bump = {ResultUsage.bytes: ResultUsage.bytes + size, ResultUsage.count: ResultUsage.count + 1}
    if ResultUsage.update(bump).where(cond).execute():
        return True
    if ResultUsage.get_or_none(ResultUsage.owner == key) is not None:
        return False  # the row exists: the cap refused it
    ResultUsage.insert(owner=key, bytes=0, count=0).on_conflict_ignore().execute()
    return bool(ResultUsage.update(bump).where(cond).execute())


def store(services: Any, execution_dbid: str, tally: Tally, data: bytes) -> bool:
    """Store one result if the quotas allow it; otherwise record the drop in `tally`. True if stored."""
    settings = services.settings
    size = len(data)
    reason = _per_execution_reason(settings, tally, size)
    if reason:
        tally.drop(size, reason)
        return False
    user_reason = (f"the results stored for all of {tally.owner.split('/', 1)[-1]}'s actors reached "
                   f"{settings.results_max_count_per_user} results or {settings.results_max_bytes_per_user} "
                   "bytes (results_max_count_per_user, results_max_bytes_per_user)")
    if time.monotonic() < tally._user_blocked_until:
        tally.drop(size, user_reason)
        return False
    with write_tx():
        if not _take_user_room(settings, tally.owner, size):
            stored = False
        else:
            Result.insert(execution_dbid=execution_dbid, data=data, created=time.time()).execute()
            stored = True
    if not stored:
        tally._user_blocked_until = time.monotonic() + USER_RETRY_S
        tally.drop(size, user_reason)
        return False
    tally.stored_count += 1
    tally.stored_bytes += size
    return True


def _give_back(key: str, count: int, size: int) -> None:
    """Return room to an owner's row (never below zero; reconcile corrects any difference)."""
    if not count:
        return
    ResultUsage.update({
        ResultUsage.count: peewee.Case(None, [(ResultUsage.count > count, ResultUsage.count - count)], 0),
        ResultUsage.bytes: peewee.Case(None, [(ResultUsage.bytes > size, ResultUsage.bytes - size)], 0),
    }).where(ResultUsage.owner == key).execute()


def owner_of_execution(execution_dbid: str) -> str | None:
    row = (Actor.select(Actor.tenant, Actor.owner)
           .join(Execution, on=(Execution.actor_dbid == Actor.dbid))
           .where(Execution.dbid == execution_dbid).first())
    return owner_key(row.tenant, row.owner) if row else None


def release(execution_dbid: str, size: int) -> None:
    """One result of an execution was read (and deleted): give its room back to the owner."""
    key = owner_of_execution(execution_dbid)
    if key is not None:
        _give_back(key, 1, size)


def discard(execution_dbid: str, key: str) -> None:
    """Delete every result of an execution (a re-run replaces them) and give their room back."""
    with write_tx():
        count, size = Result.select(peewee.fn.COUNT(Result.id), peewee.fn.SUM(peewee.fn.LENGTH(Result.data))) \
            .where(Result.execution_dbid == execution_dbid).scalar(as_tuple=True)
        if count:
            Result.delete().where(Result.execution_dbid == execution_dbid).execute()
            _give_back(key, int(count), int(size or 0))


_ORPHANS_SQL = ('DELETE FROM "result" WHERE "id" IN (SELECT r."id" FROM "result" r '
                'JOIN "execution" e ON e."dbid" = r."execution_dbid" '
                'LEFT JOIN "actor" a ON a."dbid" = e."actor_dbid" WHERE a."dbid" IS NULL)')
_USAGE_SQL = ('SELECT a."tenant", a."owner", COUNT(r."id"), SUM(LENGTH(r."data")) FROM "result" r '
              'JOIN "execution" e ON e."dbid" = r."execution_dbid" '
              'JOIN "actor" a ON a."dbid" = e."actor_dbid" GROUP BY a."tenant", a."owner"')


def reconcile() -> int:
    """Recompute every owner's usage from the stored results, in one write transaction. Results whose
    actor is gone are deleted first (nobody can read them any more). Returns the orphans deleted."""
    with write_tx():
        orphans = database.execute_sql(_ORPHANS_SQL).rowcount
        rows = database.execute_sql(_USAGE_SQL).fetchall()
        ResultUsage.delete().execute()
        fresh = [{"owner": owner_key(t, o), "count": int(c), "bytes": int(b or 0)} for t, o, c, b in rows]
        for batch in peewee.chunked(fresh, 200):
            ResultUsage.insert_many(batch).execute()
    return max(orphans, 0)


def usage(tenant: str, owner: str) -> tuple[int, int]:
    """(count, bytes) of results stored for an owner, as the quota sees them."""
    row = ResultUsage.get_or_none(ResultUsage.owner == owner_key(tenant, owner))
    return (int(row.count), int(row.bytes)) if row else (0, 0)
