"""Issue 9 unit tests: children tied to their parent (workers/lineage.py), and the helper's watch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# An intermediate process starts a child and exits at once; the child is slow to start (as a worker
# importing the whole service is), so its parent is gone before it can tie itself to it.
_INTERMEDIATE = r"""
import os, subprocess, sys
from lightabaco.workers import lineage
env = lineage.child_env(dict(os.environ), "/nonexistent-home")
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
os._exit(0)
"""
_SLOW_CHILD = r"""
import time; time.sleep(0.5)
from lightabaco.workers import lineage
lineage.tie_to_parent()
time.sleep(30)
"""
_TIED_CHILD = r"""
from lightabaco.workers import lineage
lineage.tie_to_parent()
import time; time.sleep(30)
"""


def run_intermediate(child_code: str) -> int:
    out = subprocess.run([sys.executable, "-c", _INTERMEDIATE, child_code], cwd=ROOT, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return int(out.stdout.strip())


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_a_child_whose_parent_died_before_it_started_exits() -> None:
    pid = run_intermediate(_SLOW_CHILD)
    assert wait_dead(pid), "the child outlived a parent that died before it tied itself to it"


def test_a_tied_child_dies_with_its_parent() -> None:
    pid = run_intermediate(_TIED_CHILD)
    assert wait_dead(pid)


def test_an_untied_child_would_outlive_its_parent() -> None:
    """The control: without the lineage calls the same child lives on (so the tests above can fail)."""
    pid = run_intermediate("import time; time.sleep(3)")
    time.sleep(1.0)
    try:
        assert alive(pid)
    finally:
        if alive(pid):
            os.kill(pid, 9)


def test_the_child_environment_names_the_server() -> None:
    from lightabaco.workers import lineage

    env = lineage.child_env({"A": "1"}, "/srv/home")
    assert env["A"] == "1" and env[lineage.MARKER_ENV] == "/srv/home"
    assert env[lineage.PARENT_ENV] == str(os.getpid())


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    """contrib/lightabaco.service passes `systemd-analyze verify` (skipped where systemd is absent)."""
    import shutil

    import pytest

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = (ROOT / "contrib" / "lightabaco.service").read_text()
    assert "%h/.local/bin/lightabaco serve" in text
    # The unit names the usual install path; point it at an executable that exists here.
    unit = tmp_path / "lightabaco.service"
    unit.write_text(text.replace("%h/.local/bin/lightabaco", sys.executable))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "lightabaco.service" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_images_prune_keeps_what_actors_use_and_frees_the_rest(tmp_path: Path) -> None:
    from lightabaco.cli.commands import main as cli_main
    from lightabaco.config import Settings
    from lightabaco.images import ImageStore
    from lightabaco.store import db
    from lightabaco.store.models import Actor
    from tests.fixtures.oci import busybox_layout

    home = tmp_path / "home"
    store = ImageStore(home / "images")
    busybox_layout(tmp_path / "a", script="#!/bin/sh\necho a\n")
    busybox_layout(tmp_path / "b", script="#!/bin/sh\necho b\n")
    store.import_path(tmp_path / "a", tag="keep/me")
    store.import_path(tmp_path / "b", tag="drop/me")
    db.connect(Settings.from_env(home=home))
    now = time.time()
    Actor.create(dbid="DEV_x", id="x", tenant="DEV", image="keep/me", owner="o", create_time=now,
                 last_update_time=now)
    db.close()
    before = store.disk_usage()
    assert cli_main(["images", "prune", "--dry-run", "--home", str(home)]) == 0
    assert store.digest_of("drop/me") is not None and store.disk_usage() == before
    assert cli_main(["images", "prune", "--home", str(home)]) == 0
    assert store.digest_of("drop/me") is None
    assert store.digest_of("keep/me") is not None and store.get("keep/me").rootfs.is_dir()
    assert store.disk_usage() < before
