"""How long an API request may wait for the database, and what it answers when that is not enough.

API handlers run in worker threads (never on the event loop) inside `bounded()`: a write lock held by
another process (a long worker transaction, an operator's `sqlite3` shell) makes the request wait at
most `api_db_busy_timeout_s`, then fail with DatabaseBusy, which the HTTP edge answers with 503 and a
"retry" message. Reads are not blocked by a writer in SQLite's WAL mode, so they keep answering.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from lightabaco.store import db
from lightabaco.store.db import DatabaseBusy, DatabaseCorrupt

T = TypeVar("T")

DEFAULT_WAIT_S = 3.0


class _Bound:
    wait_s = DEFAULT_WAIT_S


def configure(wait_s: float) -> None:
    """Set the API's lock-wait bound (from the api_db_busy_timeout_s setting; once, at app creation)."""
    _Bound.wait_s = max(float(wait_s), 0.0)


# The event loop's own thread runs a few cheap statements inline (the synchronous-message waiter):
# a lock may delay the loop by this much at most.
LOOP_WAIT_S = 0.25


def limit_event_loop_thread() -> None:
    """Call on the event loop's thread at start-up."""
    db.limit_this_thread(LOOP_WAIT_S)


def bounded(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call fn with this thread's database lock waits bounded by the API's setting."""
    with db.lock_wait(_Bound.wait_s):
        return fn(*args, **kwargs)


class WouldWait(Exception):
    """`now()` could not run its call without waiting for the database: run it with `bounded()` in a
    worker thread instead (nothing was written)."""


def now(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call fn on this thread (the event loop's) only if it needs no lock wait at all: SQLite answers
    "busy" at once instead of waiting, and that becomes WouldWait. For short single-transaction
    writes whose every statement runs before or inside that transaction (a busy error can then only
    mean nothing was committed): the caller retries in the threadpool with the API's full bound, so
    a locked database still costs the request at most `api_db_busy_timeout_s` and then a 503, and
    the loop never blocks on a lock. Not on PostgreSQL (a network round trip per statement would
    block the loop, and lock_timeout 0 means no limit there): WouldWait at once."""
    if db.is_postgres():
        raise WouldWait()
    try:
        with db.lock_wait(0.0):
            return fn(*args, **kwargs)
    except DatabaseBusy as exc:
        raise WouldWait() from exc


def is_busy(exc: BaseException) -> bool:
    return db.is_busy_error(exc)


def busy_message(exc: BaseException) -> str:
    if isinstance(exc, DatabaseBusy):
        return str(exc)
    return ("The database is busy: another process holds its write lock. Retry in a few seconds.")


__all__ = ["DatabaseBusy", "DatabaseCorrupt", "LOOP_WAIT_S", "WouldWait", "bounded", "busy_message", "configure",
           "is_busy", "limit_event_loop_thread", "now"]
