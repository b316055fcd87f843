"""A helper process for what the server itself may not do to a sandbox: rlimits (as root) and the
sandbox's IPC namespace (always).

rlimits: unprivileged, the monitor simply prlimit()s the sandbox's pid 1 while bwrap waits on
--block-fd. As root that fails with EPERM: changing another user's limits needs CAP_SYS_RESOURCE,
which root lacks on some hosts (this VM's bounding set has no bit 24), and the sandbox runs as the
sandbox user. A process running *as the sandbox user* may do it, so one is forked at backend start: a
copy of this process that drops to the sandbox user and then only answers requests over a socket.
That costs one round trip per execution instead of exec'ing prlimit(1) in front of bwrap (about
1.2 ms measured), and, because the limits are set after the sandbox's user namespace exists,
RLIMIT_NPROC becomes a per-sandbox limit as root too.

IPC namespace: SysV shared memory lives in the sandbox's IPC namespace, in no process's memory, so
the watchdog must ask the namespace itself; and its limits (kernel.shmmax, shmall, ...) are
per-namespace sysctls that only a process *inside* it, with the euid that is root of the user
namespace owning it, may write. That euid is the host user bwrap runs as (the sandbox user as root,
else ourselves), never root: measured on kernel 6.18, a root thread that setns()'d into the IPC
namespace was refused (EACCES) for both inside uids 0 and 1000. So per execution the helper forks a
child that joins the namespace's owning user namespace and the IPC namespace (setns needs a single
threaded process: the server is not), writes the limits before the actor's first instruction, and
then answers "how much SysV shared memory?" for the watchdog until the execution is over. About
1 ms per execution, a small fraction of bwrap's own start.

The helper is a small interpreter of its own (helper_server.py), started with the backend: forking
a child per execution from it costs well under a millisecond, from a copy of the server 3-17 ms.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ExecutionSetupError
from .helper_server import (_EXITED, _HEAD, _IO_KEYS, _ITEM, _NET_DOOR, _PID, _PORT, _PRLIMIT, _REPLY,
                            _SPAWN, _USAGE, _WATCH_IPC, recv_fds_cloexec)
from .users import HostUser


class IpcWatch:
    """The sandbox's IPC namespace, seen from a helper child living in it (see the module doc)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sysv_bytes(self) -> int | None:
        """SysV shared memory of the namespace; None when the helper child is gone."""
        try:
            self._sock.send(b"?")
            reply = self._sock.recv(_USAGE.size)
        except OSError:
            return None
        if len(reply) != _USAGE.size:
            return None
        (value,) = _USAGE.unpack(reply)
        return value if value >= 0 else None

    def close(self) -> None:
        self._sock.close()  # the child sees EOF and exits


@dataclass(frozen=True)
class SpawnRusage:
    """The parts of a struct rusage the execution reads (see MonitoredExecution._finish)."""

    ru_utime: float
    ru_stime: float
    ru_maxrss: int


class SpawnedRuntime:
    """A runtime the helper started (as the sandbox user) and will reap: the execution's handle.

    Duck-types what MonitoredExecution uses of subprocess.Popen (pid, returncode), plus the pidfd the
    helper handed over (exit is seen by polling it, kills are sent through it) and the report of its
    end (`reap`)."""

    def __init__(self, pid: int, pidfd: int, report: socket.socket) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.returncode: int | None = None
        self._report = report

    def reap(self, timeout_s: float = 30.0) -> tuple[int, SpawnRusage, dict[str, int]]:
        """(wait status, rusage, io) once the runtime has exited; the helper sends them when it
        reaped it. Raises OSError when the helper is gone without telling."""
        self._report.settimeout(timeout_s)
        try:
            data = self._report.recv(_EXITED.size)
        finally:
            self._report.close()
        if len(data) != _EXITED.size:
            raise OSError(errno_mod.EIO, "the sandbox helper ended before reporting the runtime's exit")
        status, utime, stime, maxrss, *io = _EXITED.unpack(data)
        return status, SpawnRusage(utime / 1e9, stime / 1e9, maxrss), dict(zip(_IO_KEYS, io))

    def close(self) -> None:
        self._report.close()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class RlimitHelper:
    """prlimit() as the sandbox user, and IPC namespace watches, from a forked helper process (see
    the module docstring). `user` None: the helper keeps our own identity (lightabaco unprivileged)."""

    def __init__(self, user: HostUser | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Started as us (root can run any interpreter; the sandbox user may not be able to read
        # ours), it drops to the sandbox user itself before it reads a single request.
        source = (Path(__file__).parent / "helper_server.py").read_text()
        ids = [str(user.uid), str(user.gid)] if user is not None else ["-1", "-1"]
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", source, str(theirs.fileno()), *ids, str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True, cwd="/")
        finally:
            theirs.close()
        self.pid = self._proc.pid
        self._sock = ours
        self._lock = threading.Lock()

    def _call(self, msg: bytes, fds: list[int] | None = None) -> None:
        with self._lock:
            try:
                socket.send_fds(self._sock, [msg], fds or [])
                reply = self._sock.recv(_REPLY.size)
                (err,) = _REPLY.unpack(reply)
            except (OSError, struct.error) as exc:
                raise ExecutionSetupError(
                    "the sandbox helper process is gone; restart lightabaco (it needs its helper to "
                    f"limit sandboxes): {exc}"
                ) from exc
        if err:
            raise OSError(err, os.strerror(err))

    def spawn(self, argv: list[str], env: dict[str, str], fds: dict[int, int]) -> SpawnedRuntime:
        """Start `argv` from the helper (as the sandbox user, by vfork+exec) with `fds` placed at
        their numbers (target -> our descriptor; stdin is /dev/null unless given). Raises OSError
        (e.g. ENOENT) when it cannot be started, ExecutionSetupError when the helper is gone."""
        targets = sorted(fds)
        fields = [str(len(argv)).encode(), *(os.fsencode(a) for a in argv), str(len(targets)).encode(),
                  *(str(t).encode() for t in targets),
                  *(f"{k}={v}".encode() for k, v in env.items())]
        body = b"\0".join(fields)
        for field in fields:
            if b"\0" in field:
                raise ExecutionSetupError("a runtime argument contains a NUL byte; remove it")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            with self._lock:
                try:
                    socket.send_fds(self._sock, [_HEAD.pack(_SPAWN, 0, 0) + body],
                                    [theirs.fileno(), *(fds[t] for t in targets)])
                    reply, got = recv_fds_cloexec(self._sock, _REPLY.size + _PID.size, 1)
                    (err,) = _REPLY.unpack_from(reply)
                except (OSError, struct.error) as exc:
                    raise ExecutionSetupError(
                        "the sandbox helper process is gone; restart lightabaco (it starts the "
                        f"sandboxes): {exc}") from exc
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if err:
            ours.close()
            for fd in got:
                os.close(fd)
            raise OSError(err, os.strerror(err))
        (pid,) = _PID.unpack_from(reply, _REPLY.size)
        return SpawnedRuntime(pid, got[0], ours)

    def prlimit(self, pid: int, limits: list[tuple[int, tuple[int, int]]]) -> None:
        self._call(_HEAD.pack(_PRLIMIT, pid, len(limits)) + b"".join(
            _ITEM.pack(res, s, h) for res, (s, h) in limits))

    def watch_ipc(self, pid: int, sysctls: dict[str, str], timeout_s: float = 10.0) -> IpcWatch:
        """Set `sysctls` ("kernel.shmmax" -> "value") in the IPC namespace of `pid` and return a
        watch on it. Raises OSError when the namespace cannot be joined or a value not written."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            text = "".join(f"{k}={v}\n" for k, v in sysctls.items()).encode()
            self._call(_HEAD.pack(_WATCH_IPC, pid, 0) + text, [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(timeout_s)
        try:
            reply = ours.recv(4096)
        except OSError as exc:
            ours.close()
            raise OSError(errno_mod.EIO, f"no answer from the IPC namespace helper: {exc}") from exc
        if len(reply) < _REPLY.size:
            ours.close()
            raise OSError(errno_mod.EIO, "the IPC namespace helper exited before answering")
        (err,) = _REPLY.unpack_from(reply)
        if err:
            ours.close()
            raise OSError(err, reply[_REPLY.size:].decode(errors="replace") or os.strerror(err))
        ours.settimeout(1.0)  # a watchdog query must never hang the monitor
        return IpcWatch(ours)

    def net_door(self, pid: int, port: int, prohibit: list[str], timeout_s: float = 10.0) -> socket.socket | None:
        """In the network namespace of `pid`: add prohibit routes for `prohibit` (IPv4 networks) and,
        when `port` is set, return a socket listening on 127.0.0.1:`port` there (sandbox/network.py).
        Raises OSError when the namespace cannot be joined or a step fails."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._call(_HEAD.pack(_NET_DOOR, pid, 0) + _PORT.pack(port) + " ".join(prohibit).encode(),
                       [theirs.fileno()])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            ours.settimeout(timeout_s)
            reply, fds, _, _ = socket.recv_fds(ours, 4096, 1)
        except OSError as exc:
            raise OSError(errno_mod.EIO, f"no answer from the network namespace helper: {exc}") from exc
        finally:
            ours.close()
        if len(reply) < _REPLY.size:
            raise OSError(errno_mod.EIO, "the network namespace helper exited before answering")
        (err,) = _REPLY.unpack_from(reply)
        if err:
            for fd in fds:
                os.close(fd)
            raise OSError(err, reply[_REPLY.size:].decode(errors="replace") or os.strerror(err))
        return socket.socket(fileno=fds[0]) if fds else None

    def close(self) -> None:
        self._sock.close()  # the helper sees EOF and exits
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
