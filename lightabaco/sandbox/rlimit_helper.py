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

The helper is forked early (when the backend is created) and its loop only uses os/socket calls,
struct, resource.prlimit and ctypes, so the usual fork-with-threads hazards do not apply to it.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import fcntl
import os
import resource
import signal
import socket
import struct
import threading
import time

from .errors import ExecutionSetupError
from .users import HostUser

_HEAD = struct.Struct("=ciI")  # kind, pid, number of limits
_ITEM = struct.Struct("=iqq")  # resource, soft, hard (-1 = RLIM_INFINITY)
_REPLY = struct.Struct("=i")  # 0 or errno
_USAGE = struct.Struct("=q")  # SysV bytes in the namespace (-errno when it cannot be read)
_PRLIMIT, _WATCH_IPC = b"L", b"I"
_CLONE_NEWIPC, _CLONE_NEWUSER = 0x08000000, 0x10000000
_NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
_SHM_INFO = 14
_MAX_MSG = 65536
_libc = ctypes.CDLL(None, use_errno=True)


class _ShmInfo(ctypes.Structure):
    _fields_ = [("used_ids", ctypes.c_int), ("shm_tot", ctypes.c_ulong), ("shm_rss", ctypes.c_ulong),
                ("shm_swp", ctypes.c_ulong), ("swap_attempts", ctypes.c_ulong),
                ("swap_successes", ctypes.c_ulong)]


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def sysv_bytes() -> int:
    """SysV shared memory held in the caller's IPC namespace (resident plus swapped), in bytes."""
    info = _ShmInfo()
    if _libc.shmctl(0, _SHM_INFO, ctypes.byref(info)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return (info.shm_rss + info.shm_swp) * os.sysconf("SC_PAGE_SIZE")


def _watch_ipc(pid: int, sysctls: bytes, sock: socket.socket) -> None:
    """In a forked child: join `pid`'s IPC namespace, set its limits, then answer usage queries."""
    try:
        ipc = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
        owner = fcntl.ioctl(ipc, _NS_GET_USERNS)
        _setns(owner, _CLONE_NEWUSER)
        _setns(ipc, _CLONE_NEWIPC)
        os.close(owner)
        os.close(ipc)
        # bwrap reports pid 1 as soon as it is cloned, and pid 1 writes its user namespace's uid map
        # itself, racing with us: until it has, the namespace has no root and the writes below are
        # refused (seen in about one run in five). Wait for the map (a few ms at most).
        deadline = time.monotonic() + 2.0
        while not _read_text("/proc/self/uid_map").strip() and time.monotonic() < deadline:
            time.sleep(0.0005)
        # /proc/sys/kernel/* shows, and writes, the IPC namespace of the writer, whatever the mount.
        for line in sysctls.decode().splitlines():
            name, _, value = line.partition("=")
            with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
                f.write(value)
        sock.send(_REPLY.pack(0))
    except OSError as exc:
        sock.send(_REPLY.pack(exc.errno or errno_mod.EIO) + str(exc).encode()[:1000])
        return
    while sock.recv(16):
        try:
            sock.send(_USAGE.pack(sysv_bytes()))
        except OSError as exc:
            sock.send(_USAGE.pack(-(exc.errno or errno_mod.EIO)))


def _serve(ctl: socket.socket) -> None:
    # The per-execution children are never waited for: let the kernel reap them.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, _MAX_MSG, 1)
        except OSError:
            return
        if not msg:
            return  # our parent closed the socket or died
        kind, pid, count = _HEAD.unpack_from(msg)
        body = msg[_HEAD.size:]
        err = 0
        if kind == _PRLIMIT:
            try:
                for i in range(count):
                    res, soft, hard = _ITEM.unpack_from(body, i * _ITEM.size)
                    resource.prlimit(pid, res, (soft, hard))
            except OSError as exc:
                err = exc.errno or 1
        elif kind == _WATCH_IPC and fds:
            child = os.fork()
            if child == 0:
                status = 0
                try:
                    ctl.close()
                    _watch_ipc(pid, body, socket.socket(fileno=fds[0]))
                except BaseException:  # noqa: BLE001 - never return into the helper's loop
                    status = 1
                finally:
                    os._exit(status)
        else:
            err = errno_mod.EINVAL
        for fd in fds:
            os.close(fd)
        ctl.send(_REPLY.pack(err))


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


class RlimitHelper:
    """prlimit() as the sandbox user, and IPC namespace watches, from a forked helper process (see
    the module docstring). `user` None: the helper keeps our own identity (lightabaco unprivileged)."""

    def __init__(self, user: HostUser | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the helper
            status = 0
            try:
                # Keep nothing of the parent's open files (sockets, databases) alive in here.
                keep = {theirs.fileno()}
                for name in os.listdir("/proc/self/fd"):
                    if int(name) > 2 and int(name) not in keep:
                        try:
                            os.close(int(name))
                        except OSError:
                            pass
                if user is not None:
                    os.setgroups([])
                    os.setresgid(user.gid, user.gid, user.gid)
                    os.setresuid(user.uid, user.uid, user.uid)
                _serve(theirs)
            except BaseException:  # noqa: BLE001 - never return into the parent's code
                status = 1
            finally:
                os._exit(status)
        theirs.close()
        self.pid = pid
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

    def close(self) -> None:
        self._sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
