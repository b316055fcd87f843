"""lightabaco's sandbox run by an ordinary user (no root anywhere): the normal laptop/HPC case."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, os, shutil, sys, time
from pathlib import Path
from lightabaco.sandbox.backend import get_backend
from lightabaco.sandbox.types import ExecSpec, ImageConfig, Limits, PreparedImage

rootfs, scratch = Path(sys.argv[1]), Path(sys.argv[2])
image = PreparedImage("sha256:" + "1" * 64, rootfs, ImageConfig(cmd=["/bin/sh", "-c", "x"]))
backend = get_backend("auto", scratch=scratch)
got = []
spec = ExecSpec(image=image, cmd=["/bin/sh", "-c",
    "echo $MSG; id -u; cat /_abaco_binary_data; echo; sleep 0.3; echo done"],
    env={"MSG": "hi"}, binary_message=b"payload", limits=Limits(wall_timeout_s=10, nofile=64,
    cpu_seconds=5, memory_bytes=256 << 20))
ex = backend.start(spec)
while ex.child_pid is None and ex.poll() is None:
    time.sleep(0.005)
status = Path(f"/proc/{ex.child_pid}/status").read_text()
limits = Path(f"/proc/{ex.child_pid}/limits").read_text()
res = ex.wait(20)
# A per-sandbox process limit, although this host user already runs more processes than that.
import subprocess
host_sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(40)]
try:
    forks = backend.run(ExecSpec(image=image, cmd=["/bin/sh", "-c",
        "i=0; while [ $i -lt 200 ]; do sleep 10 & i=$((i+1)); echo $i; done"],
        limits=Limits(wall_timeout_s=20, pids=30)))
finally:
    for p in host_sleepers:
        p.kill()
        p.wait()
run_left = []
if backend.scratch.run_root != scratch:  # the private tmpfs dir: must be empty, then removed
    run_left = sorted(p.name for p in backend.scratch.run_root.iterdir())
    shutil.rmtree(backend.scratch.run_root)
print(json.dumps({
    "fork_reason": forks.reason,
    "fork_count": max([int(w) for w in Path(forks.log_path).read_text().split() if w.isdigit()] or [0]),
    "backend": backend.name, "exit_code": res.exit_code, "log": Path(res.log_path).read_text(),
    "uid_line": next(l for l in status.splitlines() if l.startswith("Uid:")),
    "nofile": next(l for l in limits.splitlines() if l.startswith("Max open files")),
    "cpu": next(l for l in limits.splitlines() if l.startswith("Max cpu time")),
    "me": os.getuid(), "scratch_left": sorted(p.name for p in scratch.iterdir()),
    "run_left": run_left,
}))
"""


def test_sandbox_runs_as_an_ordinary_user(unprivileged_user, busybox_rootfs, sandbox_dir):
    python = "/usr/bin/python3" if os.geteuid() == 0 else sys.executable
    if not Path(python).exists():
        pytest.skip("no system python3 that another user can run")
    pw = pwd.getpwnam(unprivileged_user)
    work = sandbox_dir / "as-user"
    work.mkdir()
    os.chown(work, pw.pw_uid, pw.pw_gid)
    script = work / "run.py"
    script.write_text(SCRIPT)
    script.chmod(0o644)
    argv = [python, str(script), str(busybox_rootfs), str(work / "exec")]
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("runuser is missing")
        # A readable copy: the account may not be able to read the checkout (a clone under /root).
        from tests.fixtures.source import readable_source

        argv = [runuser, "-u", unprivileged_user, "--", "env", f"PYTHONPATH={readable_source()}"] + argv
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["me"] == pw.pw_uid != 0
    assert out["backend"] == "bwrap" and out["exit_code"] == 0
    assert out["log"].split() == ["hi", "1000", "payload", "done"]
    # From the host, the actor is the ordinary user, not root and not anybody else.
    assert out["uid_line"].split()[1:] == [str(pw.pw_uid)] * 4
    assert out["nofile"].split()[3:5] == ["64", "64"]
    assert out["cpu"].split()[3:5] == ["5", "5"]
    assert out["scratch_left"] == ["logs"] and out["run_left"] == []
    assert "limit of 30 processes" in out["fork_reason"], out["fork_reason"]
    # Per sandbox, not per host user (40 host sleepers): at most bwrap.nproc_limit(30) tasks.
    assert 5 <= int(out["fork_count"]) <= 30 + 16
