"""Builds as a normal user (no root): RUN in a user namespace, --chown recorded in the layer, modes kept.

Runs the builder (standard library only) with the system python3 under an unprivileged account, so it
also shows the sandbox package works without the project's virtualenv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.samples import reachable_tmpdir

pytestmark = pytest.mark.e2e

SCRIPT = r'''
import json, sys, tarfile
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from lightabaco.build.builder import build_layout
from lightabaco.build.oci_write import read_layout

class NoStore:
    def get(self, ref):
        raise KeyError(ref)

work = Path(sys.argv[2])
build_layout(work / "ctx", work / "out", NoStore(), work / "cache", network="none")
doc, layers, _ = read_layout(work / "out")
with tarfile.open(layers[-1].blob) as tar:
    members = {m.name: [m.uid, m.gid, m.mode] for m in tar.getmembers()}
    files = {n: tar.extractfile(n).read().decode() for n in ("root-uid", "tmp/app-uid")}
print(json.dumps({"members": members, "files": files, "user": doc["config"].get("User")}))
'''


def test_unprivileged_build(unprivileged_user):
    if os.geteuid() != 0:
        pytest.skip("this test switches to an unprivileged account, which needs root")
    python = shutil.which("python3", path="/usr/bin:/bin")
    if not python:
        pytest.skip("no system python3 for the unprivileged account")
    work = reachable_tmpdir("lightabaco-unpriv-build-")
    try:
        ctx = work / "ctx"
        ctx.mkdir()
        (ctx / "Containerfile").write_text(
            "FROM lightabaco/busybox\nCOPY --chown=app:app f.txt /home/app/f.txt\n"
            "RUN id -u > /root-uid && rm /bin/vi\nUSER app\nRUN id -u > /tmp/app-uid\n")
        (ctx / "f.txt").write_text("hello")
        (work / "build.py").write_text(SCRIPT)
        subprocess.run(["chown", "-R", unprivileged_user, str(work)], check=True)
        from tests.fixtures.source import readable_source  # the account may not read the checkout

        proc = subprocess.run(["runuser", "-u", unprivileged_user, "--", python, str(work / "build.py"),
                               str(readable_source()), str(work)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        members = report["members"]
        assert members["home/app/f.txt"][:2] == [1000, 1000]   # --chown without the power to chown
        assert members["tmp"][2] == 0o1777                       # modes survive a rootless unpack
        assert "bin/.wh.vi" in members
        assert all(m[:2] == [0, 0] for n, m in members.items() if n != "home/app/f.txt")  # user → root
        assert report["files"] == {"root-uid": "0\n", "tmp/app-uid": "1000\n"}
        assert report["user"] == "app"
    finally:
        shutil.rmtree(work, ignore_errors=True)
