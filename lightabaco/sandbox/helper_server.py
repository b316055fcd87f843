"""The sandbox helper process's side (see rlimit_helper.py): standard library only, so that it runs
as its own small interpreter (`python -I -S -c <this file>`), readable by nobody but the server.

Why its own interpreter and not a fork of the server: the helper forks one child per execution (to
setns() into the sandbox's namespaces), and fork costs grow with the parent's memory. Forked children
of a copy of the server took 3-17 ms each on this host; of this small process, well under 1 ms.
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
_PRLIMIT, _WATCH_IPC, _NET_DOOR = b"L", b"I", b"N"
_CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWNET = 0x08000000, 0x10000000, 0x40000000
_PORT = struct.Struct("=H")  # the API door's port inside the sandbox (0: no door)
_NS_GET_USERNS = 0xB701  # ioctl: the user namespace that owns a namespace
_SHM_INFO = 14
_MAX_MSG = 65536
_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


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
        net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        owner = fcntl.ioctl(net, _NS_GET_USERNS)
        _setns(owner, _CLONE_NEWUSER)
        _setns(net, _CLONE_NEWNET)
        os.close(owner)
        os.close(net)
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
        sock.send(_REPLY.pack(exc.errno or errno_mod.EIO) + str(exc).encode()[:1000])


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
            helper = os.getpid()
            child = os.fork()
            if child == 0:
                status = 0
                try:
                    ctl.close()
                    _watch_ipc(pid, body, socket.socket(fileno=fds[0]), helper)
                except BaseException:  # noqa: BLE001 - never return into the helper's loop
                    status = 1
                finally:
                    os._exit(status)
        elif kind == _NET_DOOR and fds:
            child = os.fork()
            if child == 0:
                status = 0
                try:
                    ctl.close()
                    _net_door(pid, body, socket.socket(fileno=fds[0]))
                except BaseException:  # noqa: BLE001 - never return into the helper's loop
                    status = 1
                finally:
                    os._exit(status)
        else:
            err = errno_mod.EINVAL
        for fd in fds:
            os.close(fd)
        ctl.send(_REPLY.pack(err))


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
    watch_parent(parent)
    _serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main()
