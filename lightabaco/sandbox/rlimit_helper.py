"""Applying rlimits to sandboxes when lightabaco runs as root.

Unprivileged, the monitor simply prlimit()s the sandbox's pid 1 while bwrap waits on --block-fd.
As root that fails with EPERM: changing another user's limits needs CAP_SYS_RESOURCE, which root
lacks on some hosts (this VM's bounding set has no bit 24), and the sandbox runs as the sandbox user.
A process running *as the sandbox user* may do it, so one is forked at backend start: a copy of this
process that drops to the sandbox user and then only answers "prlimit(pid, ...)" requests over a
pipe. That costs one pipe round trip per execution instead of exec'ing prlimit(1) in front of bwrap
(about 1.2 ms measured), and, because the limits are set after the sandbox's user namespace exists,
RLIMIT_NPROC becomes a per-sandbox limit as root too.

The copy is forked early (when the backend is created) and its loop only uses os.read/os.write,
struct and resource.prlimit, so the usual fork-with-threads hazards do not apply to it.
"""

from __future__ import annotations

import os
import resource
import struct
import threading

from .errors import ExecutionSetupError
from .users import HostUser

_HEAD = struct.Struct("=iI")  # pid, number of limits
_ITEM = struct.Struct("=iqq")  # resource, soft, hard (-1 = RLIM_INFINITY)
_REPLY = struct.Struct("=i")  # 0 or errno


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _serve(req: int, rep: int) -> None:
    while True:
        try:
            pid, count = _HEAD.unpack(_read_exact(req, _HEAD.size))
            items = [_ITEM.unpack(_read_exact(req, _ITEM.size)) for _ in range(count)]
        except EOFError:
            return  # our parent closed the pipe or died
        err = 0
        try:
            for res, soft, hard in items:
                resource.prlimit(pid, res, (soft, hard))
        except OSError as exc:
            err = exc.errno or 1
        os.write(rep, _REPLY.pack(err))


class RlimitHelper:
    """prlimit() as the sandbox user, from a forked helper process (see the module docstring)."""

    def __init__(self, user: HostUser) -> None:
        req_r, req_w = os.pipe2(os.O_CLOEXEC)
        rep_r, rep_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the helper
            status = 0
            try:
                # Keep nothing of the parent's open files (sockets, databases) alive in here.
                keep = {req_r, rep_w}
                for name in os.listdir("/proc/self/fd"):
                    if int(name) > 2 and int(name) not in keep:
                        try:
                            os.close(int(name))
                        except OSError:
                            pass
                os.setgroups([])
                os.setresgid(user.gid, user.gid, user.gid)
                os.setresuid(user.uid, user.uid, user.uid)
                _serve(req_r, rep_w)
            except BaseException:  # noqa: BLE001 - never return into the parent's code
                status = 1
            finally:
                os._exit(status)
        os.close(req_r)
        os.close(rep_w)
        self.pid = pid
        self._req, self._rep = req_w, rep_r
        self._lock = threading.Lock()

    def prlimit(self, pid: int, limits: list[tuple[int, tuple[int, int]]]) -> None:
        msg = _HEAD.pack(pid, len(limits)) + b"".join(
            _ITEM.pack(res, s, h) for res, (s, h) in limits)
        with self._lock:
            try:
                os.write(self._req, msg)
                (err,) = _REPLY.unpack(_read_exact(self._rep, _REPLY.size))
            except (OSError, EOFError) as exc:
                raise ExecutionSetupError(
                    "the rlimit helper process is gone; restart lightabaco (it runs as root and "
                    f"needs its helper to limit sandboxes): {exc}"
                ) from exc
        if err:
            raise OSError(err, os.strerror(err))

    def close(self) -> None:
        for fd in (self._req, self._rep):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass

