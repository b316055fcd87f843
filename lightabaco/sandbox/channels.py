"""The three data channels of one execution: binary message in, results out, logs out.

None of these own a thread: the execution's single monitor thread poll()s on their file
descriptors together with the process's pidfd, so a result or a log line is handled the moment it
arrives and the end of the process is noticed without polling (sandbox-notes §7 measured a 100 ms
poll turning every execution into a 101 ms one).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path
from typing import Callable

from .errors import ExecutionSetupError
from .types import MAX_RESULT_BYTES

log = logging.getLogger(__name__)

# Abaco appends this sentence when it truncates a log (spec §4.5 step 10); clients grep for it.
MAX_KEPT_RESULT_BYTES = 256 << 20  # total result bytes kept per execution

TRUNCATION_MARKER = "\n LOG LIMIT EXCEEDED; this execution log was TRUNCATED! (kept the first {cap} bytes)\n"


def write_binary_data(path: Path, data: bytes | None, owner: tuple[int, int] | None = None) -> None:
    """Write the binary message to a regular file that will be bound read-only into the sandbox.

    Why a regular file and not a FIFO as Abaco uses: the agavepy/tapipy reader opens the path with
    O_NONBLOCK and stops at the first EAGAIN, so through a FIFO it only gets what fits in the pipe
    buffer (at most fs.pipe-max-size = 1 MiB, sandbox-notes §5.3), and Abaco's own write-before-start
    deadlocks above 64 KiB. A regular file gives both that reader and a plain blocking
    open().read() the whole message, of any size, with no feeder thread (spec §4.2 REC).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if data:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        if owner is not None:
            os.fchown(fd, owner[0], owner[1])
        os.fchmod(fd, 0o444 if owner is None else 0o400)
    finally:
        os.close(fd)


class ResultsSocket:
    """The host end of /_abaco_results.sock: collects datagrams in arrival order.

    With an `on_result` callback each datagram goes to the callback and only the ones it failed to
    take are kept in `results`; without one, all are kept.

    Datagrams over MAX_RESULT_BYTES are detected with MSG_TRUNC and counted as rejected instead of
    being stored truncated (Abaco silently truncates them; a truncated pickle is worse than none).
    So are datagrams beyond MAX_KEPT_RESULT_BYTES in total: results are held in the worker's
    memory, and an actor sending without end must not exhaust it.
    """

    def __init__(self, path: Path, on_result: Callable[[bytes], None] | None = None,
                 mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.results: list[bytes] = []
        self.rejected = 0
        self._kept = 0
        self._on_result = on_result
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setblocking(False)
        try:
            self._bind(path)
            if owner is not None:
                os.chown(path, owner[0], owner[1])
            os.chmod(path, mode)
        except OSError as exc:
            self.sock.close()
            raise ExecutionSetupError(f"cannot create the results socket {path}: {exc}") from exc

    def _bind(self, path: Path) -> None:
        # sun_path holds 107 bytes. A deep scratch root would overflow it, so bind through the
        # directory's /proc/self/fd entry, which is short and names the same directory.
        if len(os.fsencode(path)) < 100:
            self.sock.bind(os.fspath(path))
            return
        dfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.sock.bind(f"/proc/self/fd/{dfd}/{path.name}")
        finally:
            os.close(dfd)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, max_items: int | None = 256) -> None:
        """Receive queued datagrams (non-blocking; at most `max_items`, so that an actor sending
        without pause cannot keep the monitor here); calls on_result for each accepted one."""
        count = 0
        while max_items is None or count < max_items:
            count += 1
            try:
                data, _, flags, _ = self.sock.recvmsg(MAX_RESULT_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return
                raise
            if flags & socket.MSG_TRUNC or self._kept + len(data) > MAX_KEPT_RESULT_BYTES:
                self.rejected += 1
                continue
            self._kept += len(data)
            if self._on_result is not None:
                try:
                    self._on_result(data)
                    continue  # the caller has it: holding a copy here would only cost memory
                except Exception:  # a broken callback must not lose the result: keep it instead
                    log.exception("on_result callback failed", extra={"action": "results"})
            self.results.append(data)

    def close(self) -> None:
        self.sock.close()


class LogSink:
    """A pipe whose write end becomes the sandbox's stdout and stderr, copied to a capped file.

    Why a pipe and not the file itself as stdout: RLIMIT_FSIZE is per process, not per file, so it
    cannot cap one log without also capping the actor's own files, and a size check that kills would
    turn a chatty actor into a failed one. Here the monitor copies at most `cap` bytes to the file,
    writes the truncation marker once, and keeps reading (and discarding) so the actor never blocks
    on a full pipe and the disk never fills. stdout and stderr share the one pipe, so their order is
    the order the actor wrote them in.
    """

    def __init__(self, path: Path, cap: int | None) -> None:
        self.path = path
        self.cap = cap
        self.written = 0
        self.dropped = 0
        self.truncated = False
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        try:
            self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.close()
            raise ExecutionSetupError(f"cannot create the log file {path}: {exc.strerror}") from exc
        self._tail = b""

    def fileno(self) -> int:
        return self.read_fd

    def close_write_end(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def pump(self, max_reads: int = 16) -> bool:
        """Read what is in the pipe now. Returns False at EOF (every writer has gone).

        At most `max_reads` reads per call: an actor that writes without pause would otherwise
        keep the monitor here for ever, and deadlines and kills would never be looked at."""
        for _ in range(max_reads):
            try:
                chunk = os.read(self.read_fd, 65536)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            self._take(chunk)
        return True

    def _take(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-4096:]
        if self.cap is None:
            self._write(chunk)
            return
        room = self.cap - self.written
        if room > 0:
            self._write(chunk[:room])
        if len(chunk) > room:
            self.dropped += len(chunk) - max(room, 0)
            if not self.truncated:
                self.truncated = True
                os.write(self._file, TRUNCATION_MARKER.format(cap=self.cap).encode())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._file, view)
            view = view[n:]
        self.written += len(data)

    def tail(self) -> bytes:
        """The last few KiB the actor wrote (kept even past the cap): for explaining failures."""
        return self._tail

    def close(self) -> None:
        self.close_write_end()
        for fd_name in ("read_fd", "_file"):
            fd = getattr(self, fd_name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, fd_name, -1)
