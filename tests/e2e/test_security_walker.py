"""Builder attacks through the base image's symlinks (issue 15: one chroot-safe walker for the builder too).

A base image whose directories are symlinks to the host's `/` and to a host directory (the sentinel),
and whose /run/lightabaco-host-ca.crt (the mount point the builder binds the host's CA bundle on) is a
dangling link into the sentinel. The Containerfile COPYs, ADDs an archive and sets WORKDIR through
them: everything must land inside the image (the links mean what they mean inside it), and nothing
outside the build tree is created or changed. Built with the Skeleton (no RUN: the base's nodes are laid
out on demand) and with RUN (the whole base laid out, bwrap mount points made and removed), by an
unprivileged account and, when the tests run as root, as root.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.fixtures.samples import reachable_tmpdir

pytestmark = pytest.mark.e2e

SCRIPT = r'''
import json, os, sys, tarfile
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from types import SimpleNamespace
from lightabaco.build import bases
from lightabaco.build.builder import build_layout
from lightabaco.build.oci_write import read_layout
from lightabaco.build.tree import unpack_layers

work, mode = Path(sys.argv[2]), sys.argv[3]
sentinel = work / "sentinel"
base = work / "base-rootfs"
base.mkdir()
unpack_layers(bases.ensure_base("lightabaco/busybox", work / "cache"), base)
os.symlink("/", base / "thatdir")
os.symlink(str(sentinel), base / "hostdir")
(base / "run").mkdir(exist_ok=True)
os.symlink(str(sentinel / "planted-ca"), base / "run" / "lightabaco-host-ca.crt")

class HostileStore:
    def get(self, ref):
        config = SimpleNamespace(env=["PATH=/bin:/usr/bin"], entrypoint=None, cmd=None, working_dir="",
                                 user="", labels={})
        return SimpleNamespace(config_digest="sha256:" + "ab" * 32, config=config, rootfs=base)

build_layout(work / "ctx", work / "out", HostileStore(), work / "cache",
             network="host" if mode == "run" else "none", no_cache=True)
doc, layers, _ = read_layout(work / "out")
with tarfile.open(layers[-1].blob) as tar:
    members = {m.name.rstrip("/"): m.type.decode() for m in tar.getmembers()}
print(json.dumps({"members": members, "workdir": doc["config"].get("WorkingDir")}))
'''


def _state(path: Path) -> dict[str, tuple]:
    """Everything observable about a directory tree: names, types, sizes, mtimes and ctimes."""
    out = {}
    for item in [path, *path.rglob("*")]:
        st = item.lstat()
        out[str(item)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def _archive(path: Path, token: str) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(f"arch-{token}")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        for name in (f"arch-{token}/f.txt", f"arch-{token}.txt"):
            info = tarfile.TarInfo(name)
            info.size, info.mode = 4, 0o644
            tar.addfile(info, io.BytesIO(b"data"))


@pytest.mark.parametrize("mode", ["skeleton", "run"])
@pytest.mark.parametrize("as_root", [False, True], ids=["unprivileged", "root"])
def test_base_symlinks_to_the_host_lead_inside_the_image(mode: str, as_root: bool, unprivileged_user: str) -> None:
    if as_root and os.geteuid() != 0:
        pytest.skip("the build as root needs the tests to run as root")
    if mode == "run" and not shutil.which("bwrap"):
        pytest.skip("RUN needs bubblewrap")
    python = sys.executable if as_root or os.geteuid() != 0 else shutil.which("python3", path="/usr/bin:/bin")
    if not python:
        pytest.skip("no system python3 for the unprivileged account")
    token = secrets.token_hex(6)
    work = reachable_tmpdir("lightabaco-walker-")
    try:
        sentinel = work / "sentinel"
        sentinel.mkdir()
        (sentinel / "keep").write_text("host data")
        ctx = work / "ctx"
        ctx.mkdir()
        (ctx / f"walker-{token}.txt").write_text("copied")
        _archive(ctx / "archive.tar", token)
        run = "RUN true\n" if mode == "run" else ""
        (ctx / "Containerfile").write_text(
            f"FROM hostile/base\n{run}"
            f"COPY walker-{token}.txt /thatdir/\nADD archive.tar /thatdir/\nWORKDIR /thatdir/sub-{token}\n"
            f"COPY walker-{token}.txt /hostdir/\nADD archive.tar /hostdir/\nWORKDIR /hostdir/sub-{token}\n"
            f"COPY walker-{token}.txt /hostdir/deeper/\nCOPY walker-{token}.txt /hostdir/keep2\n{run}")
        (work / "build.py").write_text(SCRIPT)
        before = _state(sentinel)
        if as_root:
            argv = [python, str(work / "build.py"), str(Path(__file__).resolve().parents[2]), str(work), mode]
        else:
            from tests.fixtures.source import readable_source  # the account may not read the checkout

            if os.geteuid() == 0:
                subprocess.run(["chown", "-R", unprivileged_user, str(work)], check=True)
                before = _state(sentinel)
            argv = [python, str(work / "build.py"), str(readable_source()), str(work), mode]
            if os.geteuid() == 0:
                argv = ["runuser", "-u", unprivileged_user, "--"] + argv
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        # Nothing outside the build tree was created or changed: not the sentinel, not the host's /.
        assert _state(sentinel) == before
        for name in (f"walker-{token}.txt", f"arch-{token}", f"arch-{token}.txt", f"sub-{token}"):
            assert not os.path.lexists(f"/{name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        # The links meant what they mean inside the image (so the test did walk through them).
        inside = str(sentinel).strip("/")
        members = report["members"]
        for name in (f"walker-{token}.txt", f"arch-{token}/f.txt", f"arch-{token}.txt", f"sub-{token}",
                     f"{inside}/walker-{token}.txt", f"{inside}/arch-{token}/f.txt", f"{inside}/sub-{token}",
                     f"{inside}/deeper/walker-{token}.txt", f"{inside}/keep2"):
            assert name in members, sorted(members)
        assert report["workdir"] == f"/hostdir/sub-{token}"
    finally:
        shutil.rmtree(work, ignore_errors=True)
