"""The Procfile's split deployment works: its `api` and `workers` lines, run as written (the way honcho
or foreman would run them), serve a message end to end on one home."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.server import free_port, make_home

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def procfile() -> dict[str, str]:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split(": ", 1) for line in lines)


def test_api_and_workers_as_separate_processes(sample_images):
    entries = procfile()
    assert set(entries) == {"api", "workers"}
    home = make_home("lab-procfile-")
    sample_images.install(home)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTABACO_")}
    env.update(LIGHTABACO_HOME=str(home), PORT=str(port), PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    procs = [subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for command in entries.values()]
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            token = (home / "token").read_text().strip() if (home / "token").exists() else ""
            try:
                if requests.get(base + "/actors", headers={"Authorization": f"Bearer {token}"}).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        actor = requests.post(base + "/actors", data={"image": "abacosamples/test"}, headers=headers).json()["result"]
        execution = requests.post(f"{base}/actors/{actor['id']}/messages", data={"message": "split"},
                                  headers=headers).json()["result"]["execution_id"]
        deadline = time.monotonic() + 30
        status = ""
        while time.monotonic() < deadline and status != "COMPLETE":
            status = requests.get(f"{base}/actors/{actor['id']}/executions/{execution}",
                                  headers=headers).json()["result"]["status"]
            time.sleep(0.1)
        assert status == "COMPLETE"
        logs = requests.get(f"{base}/actors/{actor['id']}/executions/{execution}/logs", headers=headers).json()
        assert "Contents of MSG: split" in logs["result"]["logs"]
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
