"""Doorbells: tiny Unix datagram sockets that wake a sleeping process. The database stays the source of
truth; a lost ring only costs the receiver its next periodic check.

Sockets live in Linux's abstract namespace (no path-length limit, nothing to clean up), named after the
instance home so that two servers on one machine never ring each other.

Doorbells reach only processes of this machine. On PostgreSQL the database also announces new messages
and execution changes to every host (store/notify.py, LISTEN/NOTIFY): `Doorbell.wake_on(channel,
payload)` turns a matching notification into a ring of that doorbell, and `ExecutionWaiter` listens for
execution changes itself, so the receiving loops stay the same on one machine or many.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

from lightabaco.store import notify

MAX_PAYLOAD = 4096


def address(home: Path, name: str) -> str:
    digest = hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:16]
    return f"\0lightabaco/{digest}/{name}"


class Doorbell:
    """The receiving end, bound to one name."""

    def __init__(self, home: Path, name: str) -> None:
        self.name = name
        self.address = address(home, name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.address)
        self.sock.setblocking(False)
        self._unsubscribe: list[Callable[[], None]] = []

    def wake_on(self, channel: str, payload: str | None = None, ring: bytes = b"m") -> bool:
        """Also ring this doorbell (with `ring`) when the database NOTIFYs `channel` — with exactly
        `payload`, or any payload when None. For workers on any host: `wake_on(notify.MESSAGES,
        actor_dbid)`; for a supervisor: `wake_on(notify.MESSAGES)`. One LISTEN connection per process
        serves every doorbell (notify.shared_listener). Returns False on SQLite (nothing to listen to;
        the local rings do the job)."""
        listener = notify.shared_listener()
        if listener is None:
            return False
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sender.setblocking(False)
        target = self.address

        def on_notify(got: str) -> None:
            if payload is None or got == payload:
                with contextlib.suppress(OSError):  # closed, or the queue is full: a ring is waiting
                    sender.sendto(ring, target)

        unsubscribe = listener.subscribe(channel, on_notify)

        def stop() -> None:
            unsubscribe()
            sender.close()

        self._unsubscribe.append(stop)
        return True

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(MAX_PAYLOAD))
            except (BlockingIOError, InterruptedError):
                return out

    def wait(self, timeout: float) -> list[bytes]:
        """Block until a ring (or timeout); returns every payload waiting."""
        import select

        got = self.drain()
        if got:
            return got
        try:
            ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        except InterruptedError:
            return []
        return self.drain() if ready else []

    def close(self) -> None:
        for stop in self._unsubscribe:
            stop()
        self._unsubscribe.clear()
        self.sock.close()


class Ringer:
    """The sending end: one unbound socket reused for every ring."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        self._api_cache: tuple[float, list[str]] = (0.0, [])

    def ring(self, name: str, payload: bytes = b"!") -> bool:
        try:
            self.sock.sendto(payload[:MAX_PAYLOAD], address(self.home, name))
            return True
        except OSError as exc:
            # Nobody listening (ECONNREFUSED), or the receiver's queue is full (EAGAIN): it will
            # notice on its next periodic check anyway.
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT, errno.EAGAIN):
                raise
            return False

    def api_names(self) -> list[str]:
        stamp, names = self._api_cache
        now = time.monotonic()
        if now - stamp > 2.0:
            try:
                names = [f"api-{p.name}" for p in (self.home / "run" / "api").iterdir()]
            except FileNotFoundError:
                names = []
            self._api_cache = (now, names)
        return names

    def ring_apis(self, payload: bytes) -> None:
        for name in self.api_names():
            self.ring(name, payload)


class ExecutionWaiter:
    """API side: lets request handlers await "something happened to execution X" rings.

    Workers ring every API process's doorbell with an execution key when a result arrives or the
    execution ends. Waiters re-check the database after each ring (or after their timeout).
    """

    def __init__(self, home: Path | None) -> None:
        self.home = home
        self.bell: Doorbell | None = None
        self._events: dict[str, set[asyncio.Event]] = {}
        self._marker: Path | None = None
        self._unlisten: Callable[[], None] | None = None

    def start(self) -> None:
        self._listen()
        if self.home is None:
            return
        name = f"api-{os.getpid()}"
        self.bell = Doorbell(self.home, name)
        marker_dir = self.home / "run" / "api"
        marker_dir.mkdir(parents=True, exist_ok=True)
        for stale in marker_dir.iterdir():  # left by a killed server: nobody answers there
            if stale.name.isdigit() and not _alive(int(stale.name)):
                with contextlib.suppress(OSError):
                    stale.unlink()
        self._marker = marker_dir / str(os.getpid())
        self._marker.touch()
        asyncio.get_running_loop().add_reader(self.bell.fileno(), self._on_ring)

    def _listen(self) -> None:
        """On PostgreSQL, executions that change on other hosts wake their waiters here too (their
        workers ring only the doorbells of their own machine)."""
        listener = notify.shared_listener()
        if listener is None:
            return
        loop = asyncio.get_running_loop()

        def on_notify(key: str) -> None:  # the listener's thread: hand over to the event loop
            if key in self._events:
                loop.call_soon_threadsafe(self._wake, key)

        self._unlisten = listener.subscribe(notify.EXECUTIONS, on_notify)

    def _wake(self, key: str) -> None:
        for event in self._events.get(key, ()):
            event.set()

    def stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        if self.bell is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.bell.fileno())
            self.bell.close()
            self.bell = None
        if self._marker is not None:
            with contextlib.suppress(FileNotFoundError):
                self._marker.unlink()

    def _on_ring(self) -> None:
        assert self.bell is not None
        for payload in self.bell.drain():
            for key in payload.decode("utf-8", "replace").split("\n"):
                self._wake(key)

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator["_Watch"]:
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        try:
            yield _Watch(event, polling=self.bell is None and self._unlisten is None)
        finally:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Watch:
    def __init__(self, event: asyncio.Event, polling: bool) -> None:
        self.event = event
        self.polling = polling

    async def wait(self, timeout: float) -> None:
        if self.polling:  # no doorbell (tests without a home): poll gently
            timeout = min(timeout, 0.05)
        try:
            await asyncio.wait_for(self.event.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self.event.clear()
