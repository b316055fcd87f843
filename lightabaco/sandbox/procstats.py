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
