"""The database handle: one peewee DatabaseProxy, bound per process by connect().

SQLite runs in WAL mode with synchronous=NORMAL (a commit survives a process crash; only an OS crash can
lose the last transactions) and a busy timeout, so the API process and every worker process can share
one file. A `postgresql://` URL is accepted for deployments that spread workers over machines.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import peewee

from lightabaco.store.handle import database  # the models bind to it (handle.py), db binds it to a file

if TYPE_CHECKING:
    from lightabaco.config import Settings

log = logging.getLogger(__name__)

LOCK_WAIT_S = 10.0

SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "busy_timeout": 10000,
    "foreign_keys": 0,
    "cache_size": -16000,
    "temp_store": "memory",
}


class StoreError(Exception):
    """The database could not be opened or used; the message says which file/URL and what to do."""


def open_database(url_or_path: str | Path) -> peewee.Database:
    text = str(url_or_path)
    if text.startswith(("postgres://", "postgresql://")):
        from playhouse.db_url import connect as url_connect

        return url_connect(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: peewee already keeps one connection per thread.
    return peewee.SqliteDatabase(str(path), pragmas=SQLITE_PRAGMAS, timeout=10,
                                 check_same_thread=False)


def connect(settings: "Settings", create: bool = True) -> peewee.Database:
    """Bind the proxy to this instance's database (creating tables when asked) and return it."""
    db = open_database(settings.database_url or settings.db_path)
    database.initialize(db)
    # Two processes opening a new database at once (the split `api` + `workers` deployment) race to
    # switch it to WAL, which SQLite answers with "locked" without waiting: retry for a while.
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            db.connect(reuse_if_open=True)
            if create:
                create_tables()
            return db
        except peewee.OperationalError as exc:
            if not db.is_closed():
                db.close()
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise StoreError(f"cannot open the database {settings.database_url or settings.db_path}: "
                                 f"{exc}; check that the home directory is writable (--home DIR)") from exc
            time.sleep(0.05)


def all_models() -> list[type[peewee.Model]]:
    from lightabaco.store import models

    found = list(models.MODELS)
    # The sharing helper's models (aliases, nonces, permissions, configs) live in their own module.
    try:
        sharing = importlib.import_module("lightabaco.store.sharing")
    except ModuleNotFoundError as exc:
        if exc.name != "lightabaco.store.sharing":
            raise
    else:
        extra = getattr(sharing, "MODELS", None)
        if extra is None:  # no explicit list: every model class defined in that module
            extra = [v for v in vars(sharing).values()
                     if isinstance(v, type) and issubclass(v, peewee.Model)
                     and v.__module__ == sharing.__name__]
        found.extend(m for m in extra if m not in found)
    return found


def create_tables() -> None:
    database.create_tables(all_models(), safe=True)


def close() -> None:
    try:
        if not database.is_closed():
            database.close()
    except Exception:  # an unbound proxy has nothing to close
        pass


@contextlib.contextmanager
def write_tx() -> Iterator[None]:
    """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE), waiting for it fairly.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25... ms between attempts, so a process that
    writes often (a busy worker) keeps re-taking the lock while another one sleeps ever longer: we saw
    one of two workers starve at ~10% of the other's rate. Here the wait for BEGIN is our own short,
    capped back-off (0.2 → 2 ms); statements inside the transaction never wait for the lock again.
    """
    db = database.obj
    if not isinstance(db, peewee.SqliteDatabase):
        with database.atomic():
            yield
        return
    if db.in_transaction():  # nested: a savepoint inside the outer write transaction
        with database.atomic():
            yield
        return
    conn = db.connection()
    deadline = time.monotonic() + LOCK_WAIT_S
    delay = 0.0002
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            ctx = database.atomic("IMMEDIATE")
            try:
                ctx.__enter__()
                break
            except peewee.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(f"the database stayed locked for {LOCK_WAIT_S:.0f} s; another "
                                     "process holds a long write transaction (see the server log)") from exc
                time.sleep(delay)
                delay = min(delay * 1.5, 0.002)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {SQLITE_PRAGMAS['busy_timeout']}")
    try:
        yield
    except BaseException:
        ctx.__exit__(*sys.exc_info())
        raise
    else:
        ctx.__exit__(None, None, None)
