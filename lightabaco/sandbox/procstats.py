"""Reading a sandbox's process tree from the host side: cpu, io, memory, process count, reaping.

Why not only wait4: processes that the kernel kills while tearing down a pid namespace are reaped
by the kernel itself, so their cpu never reaches anybody's rusage (sandbox-notes §6.3). A snapshot of
the live tree taken just before a kill keeps that cpu. And why not psutil for the snapshot: walking
`/proc/<pid>/task/*/children` only reads the sandbox's own processes, while psutil's recursive
children() reads every process on the host, which is slow exactly when it matters (a fork bomb).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
IO_KEYS = ("rchar", "wchar", "read_bytes", "write_bytes")

# Serializes "read /proc/self/io; wait4(child); read /proc/self/io" so that the io delta belongs
# to the one child being reaped (the kernel adds a reaped child's io into the parent's totals).
_REAP_LOCK = threading.Lock()


@dataclass
class TreeSnapshot:
    """The live process tree under one pid at one moment."""

    pids: list[int] = field(default_factory=list)
    cpu_ns: int = 0  # utime+stime of each live process plus the times of the children it reaped
    rss_bytes: int = 0
    io: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IO_KEYS, 0))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:  # the process is gone, or not ours to read
        return None


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads), from /proc/<pid>/task/<tid>/children."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        text = _read(f"/proc/{pid}/task/{tid}/children")
        if text:
            out.extend(int(x) for x in text.split())
    return out


def tree_pids(root: int, limit: int | None = None) -> list[int]:
    """`root` and all its descendants (stops early once more than `limit` are found)."""
    seen: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        if not os.path.exists(f"/proc/{pid}"):
            continue
        seen.append(pid)
        if limit is not None and len(seen) > limit:
            break
        stack.extend(children_of(pid))
    return seen


def _stat_fields(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # The command name may contain spaces and parentheses; everything after the last ")" is fixed.
    return text[text.rfind(")") + 2 :].split()


def snapshot(root: int, with_io: bool = True) -> TreeSnapshot:
    """cpu, rss and io of the live tree under `root` (best effort: processes may vanish meanwhile)."""
    snap = TreeSnapshot()
    for pid in tree_pids(root):
        fields = _stat_fields(pid)
        if fields is None:
            continue
        snap.pids.append(pid)
        # fields[11..14] = utime, stime, cutime, cstime (stat fields 14-17), in clock ticks.
        ticks = sum(int(fields[i]) for i in range(11, 15))
        snap.cpu_ns += ticks * 1_000_000_000 // _CLK_TCK
        snap.rss_bytes += int(fields[21]) * _PAGE
        if with_io:
            for key, value in read_io(f"/proc/{pid}/io").items():
                snap.io[key] += value
    return snap


def read_io(path: str = "/proc/self/io") -> dict[str, int]:
    """The four byte counters of a /proc/<pid>/io file (zeros when unreadable)."""
    out = dict.fromkeys(IO_KEYS, 0)
    text = _read(path)
    if text:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value)
    return out


def rss_of(pids: list[int]) -> int:
    """Total resident memory in bytes of these processes (vanished ones count 0)."""
    rss = 0
    for pid in pids:
        text = _read(f"/proc/{pid}/statm")
        if text:
            rss += int(text.split()[1]) * _PAGE
    return rss


def peak_rss_kb(pids: list[int]) -> int:
    """The largest resident-memory high-water mark (VmHWM) among these processes, in KiB."""
    peak = 0
    for pid in pids:
        text = _read(f"/proc/{pid}/status")
        if not text:
            continue
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
                break
    return peak


def reap(pid: int) -> tuple[int, object, dict[str, int]]:
    """wait4(pid) and the io the child (with everything it reaped) did, as a /proc/self/io delta."""
    with _REAP_LOCK:
        before = read_io()
        _, status, rusage = os.wait4(pid, 0)
        after = read_io()
    return status, rusage, {k: max(0, after[k] - before[k]) for k in IO_KEYS}


# -- shared memory ---------------------------------------------------------------------------------
#
# Pages of SysV segments, memfds and tmpfs files ("shmem") belong to an object, not a process: they
# show in a process's RssShmem only while it maps them, and stay allocated after it unmaps them. So
# the memory of a sandbox is counted as
#     the private memory of each process (RssAnon + RssFile)
#   + each shmem object once, whole: the sandbox's SysV segments, each memfd open in it (by inode),
#     the bytes used in its writable tmpfs mounts
#   + the mapped shmem of each process that belongs to none of those objects (shared anonymous
#     mappings, a memfd whose descriptors are all closed), from RssShmem.
# Telling the last two apart needs /proc/<pid>/smaps (about 1 ms per process), read only for
# processes that map shmem at all, and for at most SMAPS_PER_SAMPLE of them per sample: beyond
# that, their whole RssShmem is counted on top of the objects (more, never less).

SMAPS_PER_SAMPLE = 16


@dataclass
class MemoryUsage:
    """What the watchdog counts against a sandbox's memory limit, in bytes (see above)."""

    private: int = 0  # RssAnon + RssFile of every process
    mapped_other: int = 0  # mapped shmem that belongs to none of the objects counted below
    memfd: int = 0  # memfds open in the sandbox, each inode once
    sysv: int = 0  # SysV shared memory segments of its IPC namespace
    tmpfs: int = 0  # bytes used in its writable tmpfs mounts
    tmpfs_files: int = 0  # inodes used there (not memory: a separate limit)
    peak_rss_kb: int = 0  # largest VmHWM among the processes read

    @property
    def shared(self) -> int:
        return self.mapped_other + self.memfd + self.sysv + self.tmpfs

    @property
    def total(self) -> int:
        return self.private + self.shared


@dataclass
class _ProcMemory:
    private: int
    shmem: int
    hwm_kb: int


def _status_memory(pid: int) -> _ProcMemory | None:
    text = _read(f"/proc/{pid}/status")
    if not text:
        return None
    values = dict.fromkeys(("VmHWM:", "RssAnon:", "RssFile:", "RssShmem:"), 0)
    # These lines follow one another, in this order: skip the rest of the file.
    for line in text[max(text.find("VmHWM:"), 0):].splitlines():
        parts = line.split()
        if parts and parts[0] in values:
            values[parts[0]] = int(parts[1])
            if parts[0] == "RssShmem:":
                break
    return _ProcMemory((values["RssAnon:"] + values["RssFile:"]) << 10, values["RssShmem:"] << 10,
                       values["VmHWM:"])


def memfds(pid: int, seen: dict[tuple[int, int], int]) -> None:
    """Add the memfds open in `pid` to `seen` ((st_dev, st_ino) -> allocated bytes): each inode once,
    however many descriptors and processes hold it. Allocated, not apparent size: ftruncate() to
    1 GiB costs nothing until the pages are written."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return
    for name in names:
        path = f"{fd_dir}/{name}"
        try:
            if not os.readlink(path).startswith("/memfd:"):
                continue
            st = os.stat(path)
        except OSError:
            continue
        seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512


def tmpfs_usage(pid: int, mounts: tuple[str, ...]) -> tuple[int, int, set[int]]:
    """(bytes, inodes, st_dev of each) used in these writable tmpfs mounts of the sandbox whose
    pid 1 is `pid`, seen through /proc/<pid>/root. A path that is no mount of its own (the
    read-only image) is skipped; (0, 0, set()) when /proc refuses or the process is gone."""
    root = f"/proc/{pid}/root"
    used = files = 0
    devs: set[int] = set()
    try:
        root_dev = os.stat(root).st_dev
    except OSError:
        return 0, 0, devs
    for mount in mounts:
        path = f"{root}/{mount}"
        try:
            dev = os.stat(path).st_dev
            if dev == root_dev:
                continue
            st = os.statvfs(path)
        except OSError:
            continue
        devs.add(dev)
        used += max(st.f_blocks - st.f_bfree, 0) * st.f_frsize
        files += max(st.f_files - st.f_ffree, 0)
    return used, files, devs


def mapped_known_shmem(pid: int, memfd_inodes: set[tuple[int, int]], tmpfs_devs: set[int],
                       sysv_counted: bool) -> int:
    """Bytes of `pid`'s mapped shmem that belong to objects already counted whole: its mappings of
    the counted memfds, of files on the counted tmpfs mounts and (when counted) of SysV segments."""
    text = _read(f"/proc/{pid}/smaps")
    if not text:
        return 0
    known = 0
    counted = False
    for line in text.splitlines():
        parts = line.split(None, 5)
        if not parts:
            continue
        if len(parts) >= 5 and "-" in parts[0]:  # a mapping's header: range perms offset dev inode [path]
            major, _, minor = parts[3].partition(":")
            try:
                dev = os.makedev(int(major, 16), int(minor, 16))
                ino = int(parts[4])
            except ValueError:
                counted = False
                continue
            path = parts[5] if len(parts) > 5 else ""
            counted = ((dev, ino) in memfd_inodes or dev in tmpfs_devs
                       or (sysv_counted and path.startswith("/SYSV")))
        elif counted and parts[0] == "Rss:":
            known += int(parts[1]) << 10
    return known


def memory_usage(pids: list[int], root: int, tmpfs_mounts: tuple[str, ...],
                 sysv_bytes: int | None) -> MemoryUsage:
    """Everything the sandbox whose pid 1 is `root` holds in memory, each page once (see above).
    `sysv_bytes`: its IPC namespace's SysV total, when the caller could read it (else None)."""
    usage = MemoryUsage(sysv=sysv_bytes or 0)
    usage.tmpfs, usage.tmpfs_files, devs = tmpfs_usage(root, tmpfs_mounts)
    seen: dict[tuple[int, int], int] = {}
    shmem_users: list[tuple[int, int]] = []
    for pid in pids:
        mem = _status_memory(pid)
        if mem is None:
            continue
        usage.private += mem.private
        usage.peak_rss_kb = max(usage.peak_rss_kb, mem.hwm_kb)
        memfds(pid, seen)
        if mem.shmem:
            shmem_users.append((pid, mem.shmem))
    usage.memfd = sum(seen.values())
    inodes = set(seen)
    for i, (pid, shmem) in enumerate(shmem_users):
        known = 0
        if i < SMAPS_PER_SAMPLE and (inodes or devs or sysv_bytes is not None):
            known = mapped_known_shmem(pid, inodes, devs, sysv_bytes is not None)
        usage.mapped_other += max(shmem - known, 0)
    return usage
