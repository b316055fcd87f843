"""The database handle: one peewee DatabaseProxy, bound per process by connect().

SQLite runs in WAL mode with synchronous=NORMAL (a commit survives a process crash; only an OS crash can
lose the last transactions) and a busy timeout, so the API process and every worker process can share
one file. A `postgresql://` URL is accepted for deployments that spread workers over machines.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import peewee

if TYPE_CHECKING:
    from lightabaco.config import Settings

log = logging.getLogger(__name__)

database = peewee.DatabaseProxy()

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
    try:
        db.connect(reuse_if_open=True)
    except peewee.OperationalError as exc:
        raise StoreError(f"cannot open the database {settings.database_url or settings.db_path}: {exc}; "
                         "check that the home directory is writable (--home DIR)") from exc
    if create:
        create_tables()
    return db


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


def write_tx():  # type: ignore[no-untyped-def]
    """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE).

    Taking the lock at BEGIN avoids the deadlock-prone upgrade from a read snapshot to a writer that
    plain BEGIN risks when the API and several workers write at once.
    """
    if isinstance(database.obj, peewee.SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return database.atomic()
