"""Reading a process tree from /proc (on an ordinary host process tree, no sandbox)."""

from __future__ import annotations

import os
import subprocess
import sys

from lightabaco.sandbox import procstats


def test_tree_snapshot_and_reap_of_a_small_tree():
    code = ("import os, time\n"
            "for _ in range(2):\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(30)\n"
            "        os._exit(0)\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.2:\n"
            "    pass\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pids = procstats.tree_pids(proc.pid)
        assert len(pids) == 3 and pids[0] == proc.pid
        assert len(procstats.tree_pids(proc.pid, limit=1)) == 2  # stops as soon as over the limit
        snap = procstats.snapshot(proc.pid)
        assert snap.cpu_ns >= 0.15e9 and snap.rss_bytes > 0 and snap.io["rchar"] > 0
        assert procstats.rss_of(pids) > 0 and procstats.peak_rss_kb(pids) > 0
    finally:
        for pid in procstats.tree_pids(proc.pid)[1:]:
            os.kill(pid, 9)
        proc.kill()
    status, rusage, io = procstats.reap(proc.pid)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == -9 and rusage.ru_utime + rusage.ru_stime >= 0.15
    assert set(io) == set(procstats.IO_KEYS)
    assert procstats.tree_pids(proc.pid) == [] and procstats.snapshot(proc.pid).pids == []


def test_io_of_a_missing_process_is_zero():
    assert procstats.read_io("/proc/0/io") == dict.fromkeys(procstats.IO_KEYS, 0)


def test_memory_usage_counts_a_memfd_once_and_not_again_through_mappings():
    # A parent and a child share one 24 MiB memfd, written, mapped by both (their RssShmem), and
    # kept open after the mapping in the parent is gone: counted once, as the memfd.
    code = ("import mmap, os, time\n"
            "fd = os.memfd_create('m')\nos.ftruncate(fd, 24 << 20)\n"
            "m = mmap.mmap(fd, 24 << 20)\nm.write(b'q' * (24 << 20))\n"
            "if os.fork() == 0:\n    time.sleep(30)\n    os._exit(0)\n"
            "print('ready', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        pids = procstats.tree_pids(proc.pid)
        usage = procstats.memory_usage(pids, proc.pid, (), None)
        assert 24 << 20 <= usage.memfd < 25 << 20
        assert usage.mapped_other < 1 << 20  # the mapped pages are the memfd's, already counted
        assert usage.total == usage.private + usage.shared and usage.peak_rss_kb > 0
        # Without the smaps refinement (over the per-sample budget) mapped pages count again.
        old = procstats.SMAPS_PER_SAMPLE
        procstats.SMAPS_PER_SAMPLE = 0
        try:
            assert procstats.memory_usage(pids, proc.pid, (), None).mapped_other >= 24 << 20
        finally:
            procstats.SMAPS_PER_SAMPLE = old
    finally:
        for pid in procstats.tree_pids(proc.pid)[1:]:
            os.kill(pid, 9)
        proc.kill()
        proc.wait()


def test_memory_usage_counts_shared_anonymous_mappings_per_process():
    code = ("import mmap, time\nm = mmap.mmap(-1, 16 << 20)\nm.write(b'a' * (16 << 20))\n"
            "print('ready', flush=True)\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        usage = procstats.memory_usage([proc.pid], proc.pid, (), 0)
        assert usage.mapped_other >= 16 << 20 and usage.memfd == 0
    finally:
        proc.kill()
        proc.wait()
