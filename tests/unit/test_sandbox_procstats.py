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
