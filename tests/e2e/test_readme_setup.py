"""The README's two commands set everything up from nothing: a fresh virtualenv (LIGHTABACO_VENV, so the
project's .venv is left alone), the package, then the test runner and the server both work."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.samples import reachable_tmpdir
from tests.fixtures.server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_two_commands_from_a_clean_virtualenv(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIGHTABACO_", "VIRTUAL_ENV"))}
    env["LIGHTABACO_VENV"] = str(venv)
    started = time.monotonic()
    proc = subprocess.run(["bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider",
                           "tests/unit/test_build_containerfile.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert re.search(r"\d+ passed", proc.stdout)
    assert (venv / "bin" / "lightabaco").exists()
    setup_s = time.monotonic() - started

    # Safe to run twice: the second run reuses the environment and installs nothing.
    again = subprocess.run(["bash", "scripts/test.sh", "-q", "-p", "no:cacheprovider",
                            "tests/unit/test_build_containerfile.py"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "installing lightabaco" not in again.stderr

    home = reachable_tmpdir("lightabaco-setup-home-")
    port = free_port()
    server = subprocess.Popen(["bash", "scripts/serve.sh", "--port", str(port), "--home", str(home),
                               "--no-samples", "--workers", "1"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("export TOKEN="):
                break
        token = lines[-1].strip().split("=", 1)[1]
        assert lines[0].strip() == f"export BASE=http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                r = requests.get(f"http://127.0.0.1:{port}/actors", headers={"Authorization": f"Bearer {token}"},
                                 timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["result"] == []
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    print(f"fresh set-up (venv + package + test run) took {setup_s:.1f} s")
