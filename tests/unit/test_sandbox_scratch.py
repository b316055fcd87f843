"""Per-execution scratch dirs: ids, locking, stale collection."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from lightabaco.sandbox.errors import ExecutionSetupError
from lightabaco.sandbox.scratch import Scratch, check_execution_id, new_execution_id


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "logs", ".hidden", "x" * 101, "sp ace"])
def test_unsafe_ids_are_refused(bad):
    with pytest.raises(ExecutionSetupError):
        check_execution_id(bad)


def test_generated_ids_are_safe_and_distinct():
    ids = {new_execution_id() for _ in range(100)}
    assert len(ids) == 100 and all(check_execution_id(i) for i in ids)


def test_duplicate_id_is_refused(tmp_path):
    s = Scratch(tmp_path, use_tmpfs=False)
    d = s.create("one")
    with pytest.raises(ExecutionSetupError, match="unique"):
        s.create("one")
    d.remove()
    assert not (tmp_path / "one").exists()


def test_stale_dirs_go_live_ones_stay(tmp_path):
    s = Scratch(tmp_path, use_tmpfs=False)
    s.ensure()
    live = s.create("live")
    old = (time.time() - 3600, time.time() - 3600)
    os.utime(live.path, old)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "sub").mkdir()
    (crashed / "sub" / "f").write_text("x")
    os.chmod(crashed / "sub", 0o500)  # read-only leftovers must not stop collection
    os.utime(crashed, old)
    starting = tmp_path / "starting"  # just created by someone about to lock it: left alone
    starting.mkdir()
    assert s.collect_stale() == ["crashed"]
    assert live.path.exists() and starting.exists() and (tmp_path / "logs").exists()
    live.remove()
    assert not live.path.exists()


def test_lock_held_by_another_process_is_respected(tmp_path):
    s = Scratch(tmp_path, use_tmpfs=False)
    d = tmp_path / "other"
    d.mkdir()
    os.utime(d, (time.time() - 3600, time.time() - 3600))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(30)", str(d)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert s.collect_stale() == [] and d.exists()
    finally:
        holder.kill()
        holder.wait()
    assert s.collect_stale() == ["other"]


def test_execution_dirs_live_on_a_private_tmpfs_dir(tmp_path):
    from lightabaco.sandbox.scratch import TMPFS_BASE

    s = Scratch(tmp_path / "exec")
    s.ensure()
    if s.run_root == s.root:
        pytest.skip(f"no usable {TMPFS_BASE} here")
    try:
        assert s.run_root.parent.parent == TMPFS_BASE
        st = s.run_root.stat()
        assert st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0
        d = s.create("x1")
        assert d.path.parent == s.run_root and d.binary_path.parent == s.root
        d.binary_path.write_bytes(b"big")
        d.remove()
        assert not d.path.exists() and not d.binary_path.exists()
        # Leftovers of a crashed execution in both places are collected.
        crashed = s.run_root / "crashed2"
        crashed.mkdir()
        (s.root / "crashed2.binary-data").write_bytes(b"x")
        old = (time.time() - 3600, time.time() - 3600)
        os.utime(crashed, old)
        os.utime(s.root / "crashed2.binary-data", old)
        assert sorted(s.collect_stale()) == ["crashed2", "crashed2.binary-data"]
    finally:
        import shutil

        shutil.rmtree(s.run_root, ignore_errors=True)


def test_a_tmpfs_dir_owned_by_someone_else_is_not_used(tmp_path, monkeypatch):
    import lightabaco.sandbox.scratch as scratch_mod

    fake_shm = tmp_path / "shm"
    fake_shm.mkdir()
    monkeypatch.setattr(scratch_mod, "TMPFS_BASE", fake_shm)
    squatter = fake_shm / f"lightabaco-{os.geteuid()}"
    squatter.mkdir(mode=0o777)
    squatter.chmod(0o777)  # writable by others: must not be trusted
    s = Scratch(tmp_path / "exec")
    s.ensure()
    assert s.run_root == s.root
