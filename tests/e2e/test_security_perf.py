"""Attacks on the faster execution path (issue 14): the spawner in the sandbox helper.

As root the sandbox runtime is started by the helper process (already the sandbox user) instead of
by the worker. What must still hold: the sandbox inherits no descriptor of the helper or the worker
(a helper request socket would let the actor ask for prlimit()s and namespace joins), killing the
worker leaves no sandbox behind, kills and timeouts still end it, and the rlimits still apply.
Run unprivileged these exercise the ordinary Popen path, which must hold the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightabaco.sandbox.types import Limits
from tests.fixtures.sandbox import prepared

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _fd_listing(text: str) -> dict[str, str]:
    """`ls -l /proc/self/fd/` lines -> {fd: target}; ls's own directory descriptor shows without a
    target (it is gone by the time ls reads its link)."""
    out = {}
    for line in text.splitlines():
        before, arrow, target = line.partition(" -> ")
        words = before.split()
        if words and words[-1].isdigit():
            out[words[-1]] = target if arrow else ""
    return out


def test_sandbox_inherits_no_descriptor_of_the_helper_or_worker(bwrap_backend, busybox_rootfs, make_spec):
    """The actor lists every descriptor it holds: only stdin (/dev/null) and the log pipe."""
    image = prepared(busybox_rootfs)
    # Many executions at once through one helper: a descriptor received for one must not leak into
    # another's sandbox (the helper holds report sockets and pidfds of the others meanwhile).
    blocker = bwrap_backend.start(make_spec(image, "/bin/sleep", "30"))
    try:
        res = bwrap_backend.run(make_spec(image, "/bin/ls", "-l", "/proc/self/fd/", binary_message=b"m",
                                          limits=Limits(wall_timeout_s=20, memory_bytes=64 << 20)))
    finally:
        blocker.kill()
        blocker.wait(20)
    assert res.exit_code == 0, res.reason
    fds = _fd_listing(Path(res.log_path).read_text())
    assert fds.get("0") == "/dev/null"
    assert fds.get("1", "").startswith("pipe:") and fds.get("1") == fds.get("2")
    # ls's own descriptor for the directory it lists may show (without a target); nothing else may.
    extra = {fd: t for fd, t in fds.items() if fd not in ("0", "1", "2") and t}
    assert not extra, f"the sandbox inherited descriptors: {extra}"


def test_killing_the_worker_leaves_no_sandbox(sandbox_dir, busybox_rootfs):
    """SIGKILL the process that owns the backend while its sandbox runs: the sandbox must end too."""
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from pathlib import Path
from lightabaco.sandbox.bwrap import BwrapBackend
from lightabaco.sandbox.types import ExecSpec, Limits
from tests.fixtures.sandbox import prepared
be = BwrapBackend(Path({str(sandbox_dir / 'exec')!r}))
ex = be.start(ExecSpec(image=prepared(Path({str(busybox_rootfs)!r})), cmd=["/bin/sleep", "300"],
                       limits=Limits(wall_timeout_s=300)))
while ex.child_pid is None:
    time.sleep(0.01)
print(ex.child_pid, be._helper.pid, flush=True)
time.sleep(300)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        child, helper = (int(x) for x in line.split())
        assert Path(f"/proc/{child}").exists()
        # The helper's own children: bwrap (as root), the IPC child forked ahead (the spare), ...
        helper_kids = [int(x) for x in Path(f"/proc/{helper}/task/{helper}/children").read_text().split()]
        assert helper_kids, "the helper should hold at least its spare IPC child"
    finally:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in (child, helper, *helper_kids)):
        time.sleep(0.05)
    assert not _alive(child), "the sandbox outlived its worker"
    assert not _alive(helper), "the helper outlived its worker"
    assert not [p for p in helper_kids if _alive(p)], "a child of the helper outlived it"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_and_timeout_still_end_the_sandbox(bwrap_backend, bb_image, make_spec):
    ex = bwrap_backend.start(make_spec(bb_image, "/bin/sh", "-c", "trap '' TERM; sleep 60"))
    deadline = time.monotonic() + 10
    while ex.child_pid is None and time.monotonic() < deadline:
        time.sleep(0.01)
    ex.kill(grace_s=0.2)
    res = ex.wait(20)
    assert res is not None and res.killed
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sleep", "60", timeout=0.5))
    assert res.timed_out and res.wall_s < 10
    # The runtime's end is reported with its real status and resources, not made up.
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "cat /etc/passwd; exit 7"))
    assert res.exit_code == 7 and res.stats_source == "wait4"
    assert res.io["rchar"] > 0 and res.cpu_ns > 0


def test_rlimits_apply_to_a_spawned_sandbox(bwrap_backend, bb_image, make_spec):
    limits = Limits(wall_timeout_s=20, nofile=37, max_file_bytes=1 << 20)
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "ulimit -n; ulimit -f; ulimit -c",
                                      limits=limits))
    assert res.exit_code == 0, res.reason
    # busybox's ulimit -f counts 512-byte blocks
    assert Path(res.log_path).read_text().split() == ["37", "2048", "0"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the helper spawns only when lightabaco runs as root")
def test_spawned_sandbox_runs_as_the_sandbox_user_not_root(bwrap_backend, bb_image, make_spec):
    from lightabaco.sandbox.users import sandbox_host_user

    user = sandbox_host_user()
    assert user is not None
    ex = bwrap_backend.start(make_spec(bb_image, "/bin/sleep", "30"))
    try:
        deadline = time.monotonic() + 10
        while ex.child_pid is None and time.monotonic() < deadline:
            time.sleep(0.01)
        runtime = ex.proc.pid  # type: ignore[union-attr]
        for pid in (runtime, ex.child_pid):
            with open(f"/proc/{pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            assert {int(u) for u in uids} == {user.uid}
        # bwrap's parent is the helper, and it dies with it (--die-with-parent is tied to the
        # helper's request thread, which is its only long-lived thread).
        with open(f"/proc/{runtime}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        assert ppid == bwrap_backend._helper.pid
    finally:
        ex.kill()
        ex.wait(20)
    _ = signal  # imported for readers: kills go through pidfds
