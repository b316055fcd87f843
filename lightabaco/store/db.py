"""The database handle: one peewee DatabaseProxy, bound per process by connect().

SQLite runs in WAL mode with synchronous=NORMAL (a commit survives a process crash; only an OS crash can
lose the last transactions) and a busy timeout, so the API process and every worker process can share
one file.

A `postgresql://` URL (psycopg 3, `pip install 'lightabaco[postgres]'`) serves deployments that spread
workers over machines. The same models and migrations run there; the differences are kept here and in
mailbox.py: floats are DOUBLE PRECISION (epoch seconds need more than REAL's 24 bits), SQLite's
busy_timeout becomes `lock_timeout`, write transactions are plain transactions (row locks, no
database-wide write lock), schema set-up runs under an advisory lock so that processes starting together
do not race, and triggers NOTIFY new messages and execution changes (store/notify.py).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

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


class DatabaseBusy(StoreError):
    """Another process held SQLite's write lock for longer than this thread may wait (the API answers
    503: retry)."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"The database is busy: another process held its write lock for more than "
                         f"{waited_s:g} s. Retry in a few seconds.")
        self.waited_s = waited_s


class DatabaseCorrupt(StoreError):
    """The database file fails SQLite's integrity check; the message says how to recover."""


_local = threading.local()  # .wait_s: how long this thread may wait for a lock (None: LOCK_WAIT_S)


# PostgreSQL's answers that mean "someone else holds what you need; try again": lock_not_available
# (lock_timeout), query_canceled (statement_timeout), deadlock_detected, serialization_failure.
PG_BUSY_STATES = frozenset({"55P03", "57014", "40P01", "40001"})


def _sqlstate(exc: BaseException) -> str | None:
    # peewee re-raises a driver error as its own class with the driver's exception as first argument;
    # psycopg's subclasses it does not know (LockNotAvailable, ...) come through unwrapped.
    for candidate in (exc, exc.args[0] if exc.args else None, exc.__cause__, exc.__context__):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def is_busy_error(exc: BaseException) -> bool:
    """Whether an exception means "the database is locked by someone else" (SQLITE_BUSY/LOCKED, or
    PostgreSQL's lock/statement timeout, deadlock or serialization failure)."""
    if isinstance(exc, DatabaseBusy):
        return True
    if _sqlstate(exc) in PG_BUSY_STATES:
        return True
    text = str(exc).lower()
    return isinstance(exc, peewee.OperationalError) and ("locked" in text or "busy" in text)


def is_postgres(db: Any = None) -> bool:
    """Whether the bound database (or `db`) is PostgreSQL."""
    db = database.obj if db is None else db
    return isinstance(db, peewee.PostgresqlDatabase)


def _lock_wait_s() -> float:
    wait = getattr(_local, "wait_s", None)
    return LOCK_WAIT_S if wait is None else wait


@contextlib.contextmanager
def lock_wait(seconds: float) -> Iterator[None]:
    """Within this block, this thread waits at most `seconds` for another process's write lock, then
    raises DatabaseBusy (instead of SQLite's ten seconds). For API requests: a short, clear 503."""
    db = database.obj
    sqlite = isinstance(db, peewee.SqliteDatabase)
    postgres = is_postgres(db)
    previous = getattr(_local, "wait_s", None)
    _local.wait_s = seconds
    try:
        if sqlite:
            db.execute_sql(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        elif postgres and not db.in_transaction():
            db.execute_sql(_pg_lock_timeout_sql(seconds))
        yield
    except DatabaseBusy:
        raise
    except Exception as exc:
        if is_busy_error(exc):
            raise DatabaseBusy(seconds) from exc
        raise
    finally:
        _local.wait_s = previous
        if (sqlite or postgres) and not db.is_closed() and not db.in_transaction():
            wait = LOCK_WAIT_S if previous is None else previous
            with contextlib.suppress(Exception):  # a broken connection is replaced on next use anyway
                if sqlite:
                    db.execute_sql(f"PRAGMA busy_timeout = {int(wait * 1000)}")
                else:
                    db.execute_sql(_pg_lock_timeout_sql(wait))


def _pg_lock_timeout_sql(seconds: float) -> str:
    # 0 would mean "wait forever" to PostgreSQL: the shortest real bound is 1 ms.
    return f"SET lock_timeout = {max(int(seconds * 1000), 1)}"


def lock_key(name: str) -> None:
    """Inside a write transaction: wait for any other transaction that locked the same `name`, until
    this one ends. For check-then-insert rules (a cap counted before the insert) that must hold across
    processes. PostgreSQL: a transaction-scoped advisory lock (its write transactions lock only rows);
    SQLite: nothing to do, its write transaction already excludes every other writer."""
    if is_postgres():
        database.execute_sql("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (name,))


def check_integrity(path: Path) -> None:
    """Refuse a damaged SQLite file before serving from it: `PRAGMA quick_check` (a read of every page,
    without the slower index cross-checks) must answer "ok"."""
    import sqlite3

    if not path.exists() or path.stat().st_size == 0:
        return
    problem = ""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_WAIT_S)
        try:
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
        finally:
            conn.close()
        if [r[0] for r in rows] != ["ok"]:
            problem = "; ".join(str(r[0]) for r in rows)
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # in use by another process of this instance: it checked the file when it opened it
        problem = str(exc)
    if problem:
        raise DatabaseCorrupt(
            f"The database {path} is damaged ({problem}). lightabaco will not serve from it. To recover: "
            f"stop every lightabaco process, move the file aside (mv {path} {path}.damaged; also its -wal "
            f"and -shm files), then either restore a backup to {path}, or salvage what is readable with "
            f"`sqlite3 {path}.damaged .recover | sqlite3 {path}`, or start afresh (an empty database "
            "is created on start).")


class _SqliteDatabase(peewee.SqliteDatabase):
    """SQLite with this thread's lock-wait bound applied to every connection it opens."""

    def _add_conn_hooks(self, conn: Any) -> None:
        super()._add_conn_hooks(conn)
        wait = getattr(_local, "wait_s", None)
        if wait is not None:
            conn.execute(f"PRAGMA busy_timeout = {int(wait * 1000)}")


def limit_this_thread(seconds: float) -> None:
    """From now on this thread waits at most `seconds` for a lock (the event loop's thread: its few
    inline statements may delay other requests by this much at most, then raise DatabaseBusy)."""
    _local.wait_s = seconds
    db = database.obj
    if isinstance(db, peewee.SqliteDatabase) and not db.is_closed():
        db.execute_sql(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
    elif is_postgres(db) and not db.is_closed() and not db.in_transaction():
        db.execute_sql(_pg_lock_timeout_sql(seconds))


class _PostgresDatabase(peewee.PostgresqlDatabase):
    """PostgreSQL through psycopg 3, with this thread's lock-wait bound on every connection it opens.

    peewee keeps one connection per thread, as for SQLite; each process (API, worker) opens its own."""

    # peewee's FloatField is REAL (4 bytes) on PostgreSQL: epoch seconds would be rounded to minutes.
    field_types = {**peewee.PostgresqlDatabase.field_types, "FLOAT": "DOUBLE PRECISION"}

    def __init__(self, url: str, **kwargs: Any) -> None:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        self.url = url  # store/notify.py opens its listening connection with it
        super().__init__(url, prefer_psycopg3=True, **kwargs)

    def _initialize_connection(self, conn: Any) -> None:
        super()._initialize_connection(conn)
        with conn.cursor() as cur:
            cur.execute(_pg_lock_timeout_sql(_lock_wait_s()))


def open_database(url_or_path: str | Path) -> peewee.Database:
    text = str(url_or_path)
    if text.startswith(("postgres://", "postgresql://")):
        try:
            import psycopg  # noqa: F401  (peewee would only say "driver not found" at first use)
        except ImportError as exc:
            raise StoreError("a postgresql:// database needs the psycopg driver: "
                             "pip install 'lightabaco[postgres]' (or pip install 'psycopg[binary]')") from exc
        return _PostgresDatabase(text)
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    path = Path(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: peewee already keeps one connection per thread.
    return _SqliteDatabase(str(path), pragmas=SQLITE_PRAGMAS, timeout=10, check_same_thread=False)


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
            if is_postgres(db):
                raise StoreError(f"cannot open the database {redact_url(settings.database_url)}: {exc}; check "
                                 "that PostgreSQL runs there, accepts this user and password from this host "
                                 "(pg_hba.conf) and that the database exists (createdb NAME)") from exc
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise StoreError(f"cannot open the database {settings.database_url or settings.db_path}: "
                                 f"{exc}; check that the home directory is writable (--home DIR)") from exc
            time.sleep(0.05)


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


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


# Any constant: the advisory lock that serializes schema set-up between processes on PostgreSQL.
_PG_SCHEMA_LOCK = 0x6C616261  # "laba"


def create_tables() -> None:
    with _schema_lock():
        add_missing_columns()
        database.create_tables(all_models(), safe=True)
        if is_postgres():
            from lightabaco.store import notify

            notify.install_triggers()
    # Data migrations of the sharing models (idempotent; each runs once per database).
    sharing = sys.modules.get("lightabaco.store.sharing")
    migrate = getattr(sharing, "migrate", None)
    if migrate is not None:
        migrate()


@contextlib.contextmanager
def _schema_lock() -> Iterator[None]:
    """On PostgreSQL, one process at a time creates tables, columns and triggers: two servers starting
    together would otherwise race on CREATE TABLE IF NOT EXISTS (a unique violation in the catalog)
    and CREATE OR REPLACE FUNCTION ("tuple concurrently updated"). SQLite's write lock does this there."""
    if not is_postgres():
        yield
        return
    database.execute_sql("SELECT pg_advisory_lock(%s)", (_PG_SCHEMA_LOCK,))
    try:
        yield
    finally:
        database.execute_sql("SELECT pg_advisory_unlock(%s)", (_PG_SCHEMA_LOCK,))


def add_missing_columns() -> None:
    """Idempotent schema upgrade for databases made by an older version: a field added to an existing
    model gets its column (before create_tables, which also creates indexes that may name it)."""
    from playhouse.migrate import SchemaMigrator, migrate

    db = database.obj
    migrator = None
    for model in all_models():
        table = model._meta.table_name
        if not db.table_exists(table):
            continue
        have = {c.name for c in db.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name not in have:
                migrator = migrator or SchemaMigrator.from_database(db)
                log.info("adding column %s.%s to an existing database", table, field.column_name)
                migrate(migrator.add_column(table, field.column_name, field))


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
        # PostgreSQL: row locks, no database-wide write lock to queue for; a lock held too long by
        # someone else raises lock_not_available after lock_timeout (see is_busy_error).
        try:
            with database.atomic():
                yield
        except Exception as exc:
            if getattr(_local, "wait_s", None) is not None and is_busy_error(exc) \
                    and not isinstance(exc, DatabaseBusy):
                raise DatabaseBusy(_lock_wait_s()) from exc
            raise
        return
    if db.in_transaction():  # nested: a savepoint inside the outer write transaction
        with database.atomic():
            yield
        return
    conn = db.connection()
    waited = _lock_wait_s()
    deadline = time.monotonic() + waited
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
                    if getattr(_local, "wait_s", None) is not None:
                        raise DatabaseBusy(waited) from exc
                    raise StoreError(f"the database stayed locked for {LOCK_WAIT_S:.0f} s; another "
                                     "process holds a long write transaction (see the server log)") from exc
                time.sleep(delay)
                delay = min(delay * 1.5, 0.002)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(waited * 1000)}")
    try:
        yield
    except BaseException:
        ctx.__exit__(*sys.exc_info())
        raise
    else:
        ctx.__exit__(None, None, None)
