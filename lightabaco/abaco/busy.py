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


def is_busy(exc: BaseException) -> bool:
    return db.is_busy_error(exc)


def busy_message(exc: BaseException) -> str:
    if isinstance(exc, DatabaseBusy):
        return str(exc)
    return ("The database is busy: another process holds its write lock. Retry in a few seconds.")


__all__ = ["DatabaseBusy", "DatabaseCorrupt", "LOOP_WAIT_S", "bounded", "busy_message", "configure", "is_busy", "limit_event_loop_thread"]
