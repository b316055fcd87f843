"""The sandbox helper process's side (see rlimit_helper.py): standard library only, so that it runs
as its own small interpreter (`python -I -S -c <this file>`), readable by nobody but the server.

Why its own interpreter and not a fork of the server: the helper forks one child per execution (to
setns() into the sandbox's namespaces), and fork costs grow with the parent's memory. Forked children
of a copy of the server took 3-17 ms each on this host; of this small process, well under 1 ms.

As root it is also the sandboxes' spawner (`_SPAWN`): it already runs as the sandbox user, so it can
start bwrap with posix_spawn (vfork + exec: no copy of any page table), where the server's own
`Popen(user=...)` has to fork its whole address space to switch users in the child (measured: 4.9 ms
of CPU per spawn from a 53 MB worker, against 1.3 ms by vfork). bwrap's --die-with-parent then ties it
to this helper's only request thread, and the helper ends with its worker (socket EOF, parent watch),
so no sandbox outlives the worker. The helper reaps the runtime itself and reports its wait status,
rusage and io to the execution (`_EXITED`).
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


_HEAD = struct.Struct("=ciI")  # kind, pid, number of limits
_ITEM = struct.Struct("=iqq")  # resource, soft, hard (-1 = RLIM_INFINITY)
_REPLY = struct.Struct("=i")  # 0 or errno
_USAGE = struct.Struct("=q")  # SysV bytes in the namespace (-errno when it cannot be read)
_PRLIMIT, _WATCH_IPC, _NET_DOOR, _SPAWN = b"L", b"I", b"N", b"S"
_PID = struct.Struct("=i")  # the spawned runtime's pid, after _REPLY
# The spawned runtime's end: wait status, user and system cpu (ns), maxrss (KiB), then the io of
# /proc/self/io's keys (rchar, wchar, read_bytes, write_bytes) it and its reaped children did.
_EXITED = struct.Struct("=iqqqqqqq")
_IO_KEYS = ("rchar", "wchar", "read_bytes", "write_bytes")
# posix_spawn() restores these to their defaults in the runtime: the helper's interpreter ignores
# SIGPIPE and SIGXFSZ, and an ignored disposition would otherwise survive exec (as Popen's
# restore_signals does for the server's own children).
_RESTORE_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD)
_CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWNET = 0x08000000, 0x10000000, 0x40000000
_PORT = struct.Struct("=H")  # the API door's port inside the sandbox (0: no door)
_NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
_SHM_INFO = 14
_MAX_MSG = 65536
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4


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


def _join_namespace(pid: int, kind: str, nstype: int) -> None:
    """setns() into `pid`'s namespace of `kind` ("ipc", "net"), through the user namespace that owns
    it first: only there do we hold the capabilities the second setns() needs."""
    ns = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    owner = fcntl.ioctl(ns, _NS_GET_USERNS)
    _setns(owner, _CLONE_NEWUSER)
    _setns(ns, nstype)
    os.close(owner)
    os.close(ns)


def _send_refusal(sock: socket.socket, exc: OSError) -> None:
    """Tell the server a forked child's setup failed: the errno, then the message (at most 1000 bytes)."""
    sock.send(_REPLY.pack(exc.errno or errno_mod.EIO) + str(exc).encode()[:1000])


def sysv_bytes() -> int:
    """SysV shared memory held in the caller's IPC namespace (resident plus swapped), in bytes."""
    info = _ShmInfo()
    if _libc.shmctl(0, _SHM_INFO, ctypes.byref(info)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return (info.shm_rss + info.shm_swp) * os.sysconf("SC_PAGE_SIZE")


def die_with_parent(parent: int) -> None:
    """SIGKILL us when `parent` dies; exit now if it already has (we were re-parented). Set after
    every change of identity: the kernel clears the death signal when the uid changes. Used for the
    per-execution children, forked by the helper's only thread."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent > 0 and os.getppid() != parent:
        os._exit(1)


def watch_parent(parent: int, period_s: float = 0.5) -> None:
    """Exit once `parent` (the worker that started us) is gone. Not PR_SET_PDEATHSIG: that fires when
    the *thread* that forked us ends, and the helper must live as long as the whole process. The
    closed socket also ends the helper, but only when nothing else holds the other end."""
    if parent <= 0:
        return

    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=loop, name="parent-watch", daemon=True).start()


def _watch_ipc(pid: int, sysctls: bytes, sock: socket.socket, helper: int) -> None:
    """In a forked child: join `pid`'s IPC namespace, set its limits, then answer usage queries."""
    die_with_parent(helper)
    try:
        _join_namespace(pid, "ipc", _CLONE_NEWIPC)
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
        _send_refusal(sock, exc)
        return
    while sock.recv(16):
        try:
            sock.send(_USAGE.pack(sysv_bytes()))
        except OSError as exc:
            sock.send(_USAGE.pack(-(exc.errno or errno_mod.EIO)))


def _add_prohibit_route(nl: socket.socket, network: str, seq: int) -> None:
    """`ip route add prohibit NETWORK` (IPv4) through rtnetlink: connect() there fails at once."""
    addr, _, bits = network.partition("/")
    dst = socket.inet_aton(addr)
    rta = struct.pack("=HH", 8, 1) + dst  # RTA_DST
    # rtmsg: family, dst_len, src_len, tos, table (main), protocol (static), scope, type (prohibit)
    rtm = struct.pack("=BBBBBBBBI", socket.AF_INET, int(bits or 32), 0, 0, 254, 4, 0, 8, 0)
    body = rtm + rta
    # RTM_NEWROUTE, flags REQUEST|ACK|CREATE|REPLACE
    nl.send(struct.pack("=IHHII", 16 + len(body), 24, 0x1 | 0x4 | 0x400 | 0x100, seq, 0) + body)
    reply = nl.recv(4096)
    err = struct.unpack_from("=i", reply, 16)[0] if len(reply) >= 20 else -errno_mod.EIO
    if err:
        raise OSError(-err, f"cannot add a prohibit route for {network}: {os.strerror(-err)}")


def _net_door(pid: int, body: bytes, sock: socket.socket) -> None:
    """In a forked child: join `pid`'s network namespace, refuse the given destinations there, and
    hand back a TCP socket listening on 127.0.0.1:<port> inside it (see sandbox/network.py)."""
    try:
        (port,) = _PORT.unpack_from(body)
        _join_namespace(pid, "net", _CLONE_NEWNET)
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
        for seq, network in enumerate(body[_PORT.size:].decode().split(), start=1):
            _add_prohibit_route(nl, network, seq)
        nl.close()
        fds = []
        if port:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # bwrap brings the namespace's loopback up itself, possibly just after reporting pid 1.
            deadline = time.monotonic() + 2.0
            while True:
                try:
                    listener.bind(("127.0.0.1", port))
                    break
                except OSError as exc:
                    if exc.errno != errno_mod.EADDRNOTAVAIL or time.monotonic() > deadline:
                        raise
                    time.sleep(0.0005)
            listener.listen(64)
            fds.append(listener.fileno())
        socket.send_fds(sock, [_REPLY.pack(0)], fds)
    except OSError as exc:
        _send_refusal(sock, exc)


def recv_fds_cloexec(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """socket.recv_fds() with the descriptors close-on-exec from the start (Python 3.11's recv_fds
    ignores its flags argument, and MSG_CMSG_CLOEXEC must reach recvmsg itself)."""
    import array

    fds = array.array("i")
    msg, ancdata, _, _ = sock.recvmsg(bufsize, socket.CMSG_LEN(maxfds * fds.itemsize),
                                      socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def _read_io(pid: int | str) -> dict[str, int]:
    """/proc/<pid>/io (0 for what cannot be read): our own includes every child we reaped."""
    out = dict.fromkeys(_IO_KEYS, 0)
    try:
        for line in _read_text(f"/proc/{pid}/io").splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value)
    except (OSError, ValueError):
        pass
    return out


def _spawn(body: bytes, fds: list[int]) -> tuple[int, int]:
    """posix_spawn the runtime: body is NUL-separated fields (argv count, argv..., env entries...,
    then the target fd numbers), fds[0] is the report socket (kept by the caller), fds[1:] the
    descriptors to place at those numbers. Returns (pid, pidfd)."""
    fields = body.split(b"\0")
    argc = int(fields[0])
    argv = fields[1:1 + argc]
    ntargets = int(fields[1 + argc])
    targets = [int(x) for x in fields[2 + argc:2 + argc + ntargets]]
    env = dict(e.split(b"=", 1) for e in fields[2 + argc + ntargets:] if b"=" in e)
    sources = fds[1:]
    if len(sources) != len(targets) or not argv:
        raise OSError(errno_mod.EINVAL, "malformed spawn request")
    # Move every source above every target first, so that no dup2() overwrites a source still to
    # be placed; the copies are close-on-exec, the placed descriptors are not (dup2 clears it).
    floor = max([*targets, *sources, 2]) + 1
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in sources]
    try:
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
        actions += [(os.POSIX_SPAWN_DUP2, h, t) for h, t in zip(high, targets)]
        pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions,
                              setsigdef=_RESTORE_SIGNALS, setsigmask=())
    finally:
        for fd in high:
            os.close(fd)
    return pid, os.pidfd_open(pid)


def _report_exit(pid: int, report: socket.socket) -> None:
    """Reap a spawned runtime and tell its execution how it ended."""
    before = _read_io("self")
    _, status, ru = os.wait4(pid, 0)
    after = _read_io("self")
    io = [max(0, after[k] - before[k]) for k in _IO_KEYS]
    try:
        report.send(_EXITED.pack(status, int(ru.ru_utime * 1e9), int(ru.ru_stime * 1e9),
                                 ru.ru_maxrss, *io))
    except OSError:
        pass  # the execution is gone (its worker is ending): nothing to tell
    report.close()


# Every child of the helper, watched through a pidfd: pidfd -> (pid, report socket or None).
_CHILDREN: dict[int, tuple[int, socket.socket | None]] = {}


def _forget_children() -> None:
    """In a forked child: drop the helper's descriptors for its other children."""
    spare = _Spare.sock
    if spare is not None:
        spare.close()
        _Spare.sock = _Spare.pid = None
    for pidfd, (_, report) in list(_CHILDREN.items()):
        os.close(pidfd)
        if report is not None:
            report.close()
    _CHILDREN.clear()


class _Spare:
    """One IPC-namespace child forked ahead, while the helper is idle, waiting for its execution.

    Forking the helper costs ~1.5 ms of CPU and a scheduling round; done when the request arrives it
    sat between bwrap reporting pid 1 and the actor's first instruction (watch_ipc was 5.9 ms of a
    20 ms execution, median, on a loaded host). The spare is the same code as the on-demand child,
    started earlier: it dies with the helper, holds none of the helper's other descriptors, and gets
    its request (the _WATCH_IPC message and the execution's answer socket) over its own socket."""

    pid: int | None = None
    sock: socket.socket | None = None

    @classmethod
    def fork(cls, ctl: socket.socket, adopt) -> None:  # type: ignore[no-untyped-def]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        helper = os.getpid()
        child = os.fork()
        if child == 0:
            status = 0
            try:
                ctl.close()
                ours.close()
                _forget_children()
                die_with_parent(helper)
                msg, fds = recv_fds_cloexec(theirs, _MAX_MSG, 1)
                theirs.close()
                if msg and fds:
                    _, pid, _ = _HEAD.unpack_from(msg)
                    _watch_ipc(pid, msg[_HEAD.size:], socket.socket(fileno=fds[0]), helper)
            except BaseException:  # noqa: BLE001 - never return into the helper's loop
                status = 1
            finally:
                os._exit(status)
        theirs.close()
        cls.pid, cls.sock = child, ours
        adopt(child, None)

    @classmethod
    def hand_over(cls, msg: bytes, answer_fd: int) -> bool:
        """Give the request to the spare; False (and no spare any more) when it cannot take it."""
        sock, cls.pid, cls.sock = cls.sock, None, None
        if sock is None:
            return False
        try:
            socket.send_fds(sock, [msg], [answer_fd])
            return True
        except OSError:
            return False  # it died (the helper reaps it): fork one on demand
        finally:
            sock.close()


_SPARE = _Spare


def _serve(ctl: socket.socket) -> None:
    import select

    # Every child is reaped here: spawned runtimes with a report of how they ended, the
    # per-execution namespace children silently.
    spawned = _CHILDREN
    poller = select.poll()
    poller.register(ctl, select.POLLIN)

    def adopt(pid: int, report: socket.socket | None, pidfd: int | None = None) -> None:
        try:
            pidfd = os.pidfd_open(pid) if pidfd is None else pidfd
        except ProcessLookupError:
            return
        spawned[pidfd] = (pid, report)
        poller.register(pidfd, select.POLLIN)

    while True:
        events = poller.poll(0)
        if not events:
            # Idle: fork the next execution's IPC child now, off its critical path (_Spare).
            if _SPARE.pid is None:
                _SPARE.fork(ctl, adopt)
            events = poller.poll()
        for fd, _ in events:
            if fd == ctl.fileno():
                if not _request(ctl, adopt):
                    return
                continue
            pid, report = spawned.pop(fd)
            poller.unregister(fd)
            os.close(fd)
            if report is not None:
                _report_exit(pid, report)
            else:
                os.waitpid(pid, 0)


def _request(ctl: socket.socket, adopt) -> bool:  # type: ignore[no-untyped-def]
    """Answer one request; False when the server is gone."""
    try:
        # Close-on-exec from the start: nothing received may leak into a spawned runtime.
        msg, fds = recv_fds_cloexec(ctl, _MAX_MSG, 253)
    except OSError:
        return False
    if not msg:
        return False  # our parent closed the socket or died
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
        if not _SPARE.hand_over(msg, fds[0]):
            helper = os.getpid()
            child = os.fork()
            if child == 0:
                status = 0
                try:
                    ctl.close()
                    _forget_children()
                    _watch_ipc(pid, body, socket.socket(fileno=fds[0]), helper)
                except BaseException:  # noqa: BLE001 - never return into the helper's loop
                    status = 1
                finally:
                    os._exit(status)
            adopt(child, None)
    elif kind == _NET_DOOR and fds:
        child = os.fork()
        if child == 0:
            status = 0
            try:
                ctl.close()
                _forget_children()
                _net_door(pid, body, socket.socket(fileno=fds[0]))
            except BaseException:  # noqa: BLE001 - never return into the helper's loop
                status = 1
            finally:
                os._exit(status)
        adopt(child, None)
    elif kind == _SPAWN and fds:
        report = socket.socket(fileno=os.dup(fds[0]))
        try:
            child, pidfd = _spawn(body, fds)
        except OSError as exc:
            report.close()
            err = exc.errno or errno_mod.EIO
        else:
            adopt(child, report, pidfd)
            for fd in fds:
                os.close(fd)
            # Our pidfd goes with the answer too: the server polls and signals it; a pidfd
            # keeps naming this process even after we reaped it (no recycled-pid kills).
            socket.send_fds(ctl, [_REPLY.pack(0) + _PID.pack(child)], [pidfd])
            return True
    else:
        err = errno_mod.EINVAL
    for fd in fds:
        os.close(fd)
    ctl.send(_REPLY.pack(err))
    return True


def main() -> None:
    """argv: socket fd, then uid and gid to run as (-1: keep ours), then the parent's pid (the helper
    dies with it; it also exits when the socket closes, but a blocked parent would not close it)."""
    import sys

    fd, uid, gid = (int(x) for x in sys.argv[1:4])
    parent = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    if uid >= 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # Changing uid made us non-dumpable, which makes our own /proc/self/io unreadable to us,
        # and the io of the runtimes we reap is measured there (_report_exit). Dumpable again: the
        # only processes of this uid are other helpers, bwrap and the sandboxes, and every sandbox
        # lives in its own pid namespace, where our pid does not exist to be traced.
        _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    # Close-on-exec: the runtimes spawned here must never inherit the request socket (an actor
    # could then ask the helper for anything it does).
    os.set_inheritable(fd, False)
    watch_parent(parent)
    _serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main()
