"""Hostile images end to end (issue 8, items 1, 7b and 8): imported with `lightabaco images import`, run on
a live server and under the bwrap backend; the host's files stay as they were.

The hostile layer swaps a 0777 directory for a symlink to a host file (the old final mode pass then
chmodded the host file), and puts symlinks into bwrap's `/oldroot` (the host's root while the sandbox
is being set up) at every mount point, bind target and the WorkingDir's parent (bwrap then created
files and directories on the host).
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest

from lightabaco.cli.commands import main
from lightabaco.sandbox.types import ExecSpec, Limits
from tests.fixtures.oci import (DEFAULT_ENV, Entry, OciLayoutWriter, busybox_entries, dir, file, symlink)

pytestmark = pytest.mark.e2e

OLD = 1_000_000_000
SCRIPT = ('#!/bin/sh\necho "pwd=$(pwd)"\necho "bin=$(cat /_abaco_binary_data | wc -c)"\n'
          'ls -d /proc/self /dev/null /tmp\necho done\n')


def make_sentinel() -> Path:
    """A host directory outside every home and store (0711 so bwrap's setup could reach it as root)."""
    s = Path(tempfile.mkdtemp(prefix="lab-sentinel-", dir="/tmp"))
    (s / "precious").write_text("keep me")
    os.chmod(s / "precious", 0o600)
    os.utime(s / "precious", (OLD, OLD))
    (s / "open").mkdir()
    os.chmod(s / "open", 0o1777)  # like /tmp: anyone (the sandbox user too) could create files here
    os.chmod(s, 0o711)
    os.utime(s, (OLD, OLD))
    return s


def state(s: Path) -> tuple:
    st, pst = os.lstat(s), os.lstat(s / "precious")
    return (sorted(os.listdir(s)), sorted(os.listdir(s / "open")), stat.S_IMODE(st.st_mode), st.st_mtime_ns, stat.S_IMODE(pst.st_mode),
            pst.st_uid, pst.st_mtime_ns, (s / "precious").read_text())


def hostile_layout(dest: Path, sentinel: Path, *, swap: bool = True, workdir_link: bool = True) -> Path:
    host = "/oldroot" + str(sentinel / "open")  # what bwrap sees as the host's path during its setup
    hostile: list[Entry] = []
    if swap:  # item 1: the deferred chmod/utime of d and hd went through these links
        hostile += [Entry("d", tarfile.DIRTYPE, mode=0o777, mtime=5), symlink("d", str(sentinel / "precious")),
                    Entry("hd", tarfile.DIRTYPE, mode=0o777, mtime=5), symlink("hd", str(sentinel))]
    hostile += [symlink("_abaco_results.sock", host + "/results-sock"), symlink("_abaco_binary_data", host + "/bd"),
                symlink("proc", host + "/proc"), symlink("dev", host + "/dev"), symlink("sys", host + "/sys"),
                symlink("tmp", host + "/tmp"), symlink("etc/hosts", host + "/hosts"),
                symlink("etc/resolv.conf", host + "/resolv.conf")]
    config = {"Env": list(DEFAULT_ENV), "Cmd": ["/app/run.sh"], "WorkingDir": "/app"}
    if workdir_link:
        hostile.append(symlink("w", host + "/w"))
        config["WorkingDir"] = "/w/app"
    w = OciLayoutWriter(media_types="oci")
    w.add_layer(busybox_entries() + [dir("app"), file("app/run.sh", SCRIPT, mode=0o755)])
    w.add_layer(hostile)
    w.finish(config)
    w.write_layout(dest)
    return dest


def cli(home: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--home", str(home), *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def sentinel():
    s = make_sentinel()
    before = state(s)
    yield s
    after = state(s)
    import shutil

    shutil.rmtree(s, ignore_errors=True)
    assert after == before, "a hostile image changed or created host files"


def test_hostile_image_on_a_live_server_leaves_the_host_alone(live_server, sentinel: Path, tmp_path: Path) -> None:
    layout = hostile_layout(tmp_path / "hostile", sentinel)
    code, out, err = cli(live_server.home, "images", "import", str(layout), "--tag", "sec/hostile:1")
    assert code == 0, err
    assert state(sentinel)[4] == 0o600  # the import itself did not chmod the host file
    actor = live_server.register(image="sec/hostile:1")
    eid = live_server.send(actor["id"], "hi")
    ex = live_server.wait_execution(actor["id"], eid, ("COMPLETE", "ERROR"), timeout=60)
    logs = live_server.logs(actor["id"], eid)
    assert ex["status"] == "COMPLETE", (ex, logs)
    assert "pwd=/w/app" in logs and "done" in logs, logs


MOUNT_LINKS = ("_abaco_results.sock", "_abaco_binary_data", "proc", "dev", "sys", "tmp", "etc/hosts",
               "etc/resolv.conf", "etc")


@pytest.mark.parametrize("name", MOUNT_LINKS)
def test_symlinked_mount_point_under_bwrap_creates_nothing_on_the_host(sandbox_dir: Path, bwrap_backend,
                                                                       sentinel: Path, name: str) -> None:
    # With the old unpacker the link stayed, and bwrap created the bind target through it on the host
    # (an empty file for the results socket and the binary message) or failed to set up.
    from lightabaco.images import ImageStore

    w = OciLayoutWriter(media_types="oci")
    w.add_layer(busybox_entries() + [dir("app"), file("app/run.sh", SCRIPT, mode=0o755)])
    w.add_layer([symlink(name, "/oldroot" + str(sentinel / "open" / name.replace("/", "-")))])
    w.finish({"Env": list(DEFAULT_ENV), "Cmd": ["/app/run.sh"], "WorkingDir": "/app"})
    w.write_layout(sandbox_dir / "layout")
    (image,) = ImageStore(sandbox_dir / "images").import_path(sandbox_dir / "layout", tag="sec/mount-link:1")
    res = bwrap_backend.run(ExecSpec(image=image, binary_message=b"12345", network="host",
                                     limits=Limits(wall_timeout_s=20)))
    text = Path(res.log_path).read_text() if res.log_path else ""
    assert res.exit_code == 0, (res, text)
    assert "pwd=/app" in text and "bin=5" in text and "done" in text, text


# ---------------------------------------------------------------------------------------------------
# Item 7(b): expansion quotas, through the real CLI and settings


def bomb_layout(dest: Path, name: str, size: int) -> Path:
    w = OciLayoutWriter(media_types="oci")
    w.add_layer([dir("data"), file(f"data/{name}", b"\0" * size)])
    w.finish({"Cmd": ["/bin/true"]})
    w.write_layout(dest)
    return dest


def test_per_image_byte_limit_refuses_a_gzip_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    layout = bomb_layout(tmp_path / "bomb", "zeros", 8 << 20)  # 8 MiB of zeros, a few KiB compressed
    assert sum(f.stat().st_size for f in (layout / "blobs/sha256").iterdir()) < 200_000
    monkeypatch.setenv("LIGHTABACO_IMAGE_MAX_BYTES", str(1 << 20))
    code, _out, err = cli(home, "images", "import", str(layout), "--tag", "sec/bomb:1")
    assert code != 0 and "LIGHTABACO_IMAGE_MAX_BYTES" in err, err
    assert os.listdir(home / "images/rootfs") == []  # no partial tree left behind
    assert [n for n in os.listdir(home / "images/tmp") if not n.startswith("refs-")] == []
    code, out, _ = cli(home, "images", "list")
    assert "sec/bomb" not in out


def test_home_quota_names_the_setting_and_images_rm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LIGHTABACO_IMAGES_MAX_BYTES", str(3 << 20))
    assert cli(home, "images", "import", str(bomb_layout(tmp_path / "a", "a", 2 << 20)), "--tag", "q/a:1")[0] == 0
    code, _out, err = cli(home, "images", "import", str(bomb_layout(tmp_path / "b", "b", 2 << 20)), "--tag", "q/b:1")
    assert code != 0 and "LIGHTABACO_IMAGES_MAX_BYTES" in err and "lightabaco images rm" in err, err
    assert len(os.listdir(home / "images/rootfs")) == 1
    assert cli(home, "images", "rm", "q/a:1")[0] == 0
    assert cli(home, "images", "import", str(tmp_path / "b"), "--tag", "q/b:1")[0] == 0
