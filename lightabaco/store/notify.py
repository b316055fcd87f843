"""Wake-ups across hosts on PostgreSQL: LISTEN/NOTIFY on top of the database.

On one machine the doorbells (abaco/doorbell.py, Unix datagrams) wake workers and API processes. When
the database is PostgreSQL, processes on other machines share it, so the database itself announces:

- `MESSAGES` (payload: the actor's dbid): a message became claimable — inserted, or its lease returned.
- `EXECUTIONS` (payload: the execution's dbid): an execution changed status or got a result.

Triggers installed with the schema (`install_triggers`, called by store.db.create_tables) send them in
the same transaction as the change, so a listener never hears of a row it cannot read yet, and every
insert path (the API's fast path, requeues, a message inserted by hand) announces without the caller's
help. A notification is only a hint: the row is the only copy, and a lost notification (a listener
that reconnects, a process that starts later) costs latency until the receiver's periodic check.

A `Listener` is a thread with its own connection (one per process is enough: `shared_listener()`) that
LISTENs on the channels it was asked for and calls the subscribers' callbacks with each payload. On
SQLite every function here is a no-op: `notify()` returns False and `shared_listener()` returns None.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from lightabaco.store.handle import database

log = logging.getLogger(__name__)

MESSAGES = "lightabaco_message"
EXECUTIONS = "lightabaco_execution"
CHANNELS = (MESSAGES, EXECUTIONS)

# How often the listener thread looks up from waiting (new subscriptions, stop): also its stop latency.
POLL_S = 0.5
RECONNECT_S = 1.0

_TRIGGERS_SQL = [
    f"""CREATE OR REPLACE FUNCTION lightabaco_notify_message() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{MESSAGES}', NEW.actor_dbid);
  RETURN NULL;
END $$""",
    """CREATE OR REPLACE TRIGGER lightabaco_message_insert AFTER INSERT ON "message"
  FOR EACH ROW EXECUTE FUNCTION lightabaco_notify_message()""",
    # A lease given back (nack, expiry, a dead worker's leases) makes the message claimable again.
    """CREATE OR REPLACE TRIGGER lightabaco_message_release AFTER UPDATE OF lease_owner ON "message"
  FOR EACH ROW WHEN (NEW.lease_owner IS NULL AND OLD.lease_owner IS NOT NULL)
  EXECUTE FUNCTION lightabaco_notify_message()""",
    f"""CREATE OR REPLACE FUNCTION lightabaco_notify_execution() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{EXECUTIONS}', NEW.dbid);
  RETURN NULL;
END $$""",
    """CREATE OR REPLACE TRIGGER lightabaco_execution_status AFTER UPDATE OF status ON "execution"
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
  EXECUTE FUNCTION lightabaco_notify_execution()""",
    f"""CREATE OR REPLACE FUNCTION lightabaco_notify_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('{EXECUTIONS}', NEW.execution_dbid);
  RETURN NULL;
END $$""",
    """CREATE OR REPLACE TRIGGER lightabaco_result_insert AFTER INSERT ON "result"
  FOR EACH ROW EXECUTE FUNCTION lightabaco_notify_result()""",
]


def enabled() -> bool:
    """Whether the bound database can LISTEN/NOTIFY (PostgreSQL)."""
    import peewee

    return isinstance(database.obj, peewee.PostgresqlDatabase)


def install_triggers() -> None:
    """Create (or replace) the NOTIFY triggers; idempotent. Needs PostgreSQL 14 or newer
    (CREATE OR REPLACE TRIGGER). Called by store.db.create_tables under its schema lock."""
    with database.atomic():
        for sql in _TRIGGERS_SQL:
            database.execute_sql(sql)


def notify(channel: str, payload: str = "") -> bool:
    """Send a notification (delivered when the current transaction commits, at once outside one).
    Returns False on SQLite, where the doorbells do this job."""
    if not enabled():
        return False
    database.execute_sql("SELECT pg_notify(%s, %s)", (channel, payload))
    return True


Callback = Callable[[str], None]


class Listener:
    """A thread that LISTENs on a dedicated connection and calls `callback(payload)` per notification.

    Callbacks run on the listener's thread: keep them short (ring a doorbell, set an event, schedule
    onto an event loop). A callback's exception is logged, never raised. After a lost connection the
    thread reconnects every RECONNECT_S and LISTENs again (what was sent meanwhile is not replayed)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._subs: dict[str, list[Callback]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()  # set while LISTENing (tests wait for it)

    def subscribe(self, channel: str, callback: Callback) -> Callable[[], None]:
        """Call `callback(payload)` for each notification on `channel`; returns the unsubscribe function.
        Starts the thread on first use."""
        with self._lock:
            self._subs.setdefault(channel, []).append(callback)
        self.start()

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._subs.get(channel, [])
                if callback in callbacks:
                    callbacks.remove(callback)

        return unsubscribe

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="lightabaco-listen", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2 * POLL_S + 1) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    self._serve(conn)
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning("LISTEN connection lost (%s); reconnecting in %g s (workers still check the "
                            "database periodically meanwhile)", exc, RECONNECT_S)
                self._stop.wait(RECONNECT_S)

    def _serve(self, conn: Any) -> None:
        from psycopg import sql

        listening: set[str] = set()
        while not self._stop.is_set():
            with self._lock:
                wanted = set(self._subs)
            for channel in wanted - listening:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                listening.add(channel)
            self.connected.set()
            for note in conn.notifies(timeout=POLL_S):
                self._dispatch(note.channel, note.payload)
                if self._stop.is_set():
                    break
                with self._lock:
                    if set(self._subs) - listening:
                        break  # a new channel to LISTEN on first
        self.connected.clear()

    def _dispatch(self, channel: str, payload: str) -> None:
        with self._lock:
            callbacks = list(self._subs.get(channel, ()))
        for callback in callbacks:
            try:
                callback(payload)
            except Exception:
                log.exception("a NOTIFY subscriber failed on %s", channel)


_shared: Listener | None = None
_shared_lock = threading.Lock()


def shared_listener() -> Listener | None:
    """This process's one Listener for the bound PostgreSQL database (one extra connection per
    process, whatever the number of subscribers); None on SQLite."""
    global _shared
    if not enabled():
        return None
    url = getattr(database.obj, "url", None)
    if not url:
        return None
    with _shared_lock:
        if _shared is None or _shared.url != url:
            if _shared is not None:
                _shared.stop()
            _shared = Listener(url)
        return _shared


def stop_shared_listener() -> None:
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
            _shared = None


def wait_connected(listener: Listener, timeout: float = 10.0) -> bool:
    """Block until the listener LISTENs (for tests and start-up ordering)."""
    return listener.connected.wait(timeout)
