"""The podman backend end to end (skipped when podman is absent or its probe says unusable)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from lightabaco.sandbox.errors import ExecutionSetupError
from tests.fixtures.sandbox import python_mounts

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def podman_backend(tmp_path_factory):  # -> PodmanBackend
    import shutil

    from lightabaco.sandbox.podman import PodmanBackend, short_run_dir

    backend = PodmanBackend(tmp_path_factory.mktemp("podman-scratch"))
    report = backend.probe()
    if not report.usable:
        pytest.skip("podman is not usable here: " + "; ".join(report.reasons))
    yield backend
    shutil.rmtree(short_run_dir(backend.base), ignore_errors=True)


def log_text(res) -> str:  # type: ignore[no-untyped-def]
    return Path(res.log_path).read_text(errors="replace")


def test_contract_env_binary_results_exit(podman_backend, py_image, make_spec):
    payload = os.urandom(3 * 1024 * 1024)
    code = r"""
import hashlib, os, socket
data = open('/_abaco_binary_data', 'rb').read()
print('msg', os.environ['MSG'], 'uid', os.getuid(), len(data), hashlib.sha256(data).hexdigest())
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
s.connect('/_abaco_results.sock')
s.send(b'r1'); s.send(b'z' * 131073); s.send(b'r2')
raise SystemExit(9)
"""
    spec = make_spec(py_image, "/usr/bin/python3", "-c", code, mounts=python_mounts(),
                     env={"MSG": "hello podman"}, binary_message=payload, timeout=60)
    res = podman_backend.run(spec)
    text = log_text(res)
    assert res.exit_code == 9, text
    assert f"msg hello podman uid 1000 {len(payload)} {hashlib.sha256(payload).hexdigest()}" in text
    assert res.results == [b"r1", b"r2"] and res.results_rejected == 1
    assert not (podman_backend.scratch.run_root / res.execution_id).exists()


def test_timeout_and_kill(podman_backend, bb_image, make_spec):
    res = podman_backend.run(make_spec(bb_image, "/bin/sh", "-c", "sleep 1011 & sleep 1012",
                                       timeout=2.0))
    assert res.timed_out and res.exit_code == 137 and "wall-clock" in res.reason
    ex = podman_backend.start(make_spec(bb_image, "/bin/sleep", "1013", timeout=60))
    time.sleep(1.0)
    ex.kill()
    res = ex.wait(60)
    assert res is not None and res.killed and res.exit_code == 137


def test_exec_failure_and_isolation(podman_backend, bb_image, make_spec):
    res = podman_backend.run(make_spec(bb_image, "/no/such/thing", timeout=60))
    assert res.failure in ("exec", "setup") and res.exit_code in (127, None)
    script = "touch /x 2>&1; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; " \
             "grep CapEff /proc/self/status"
    res = podman_backend.run(make_spec(bb_image, "/bin/sh", "-c", script, timeout=60))
    text = log_text(res)
    assert "Read-only file system" in text and "eth" not in text
    assert "CapEff:\t0000000000000000" in text


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid-0 refusal is for rootful podman")
def test_rootful_refuses_uid_zero(podman_backend, bb_image, make_spec):
    with pytest.raises(ExecutionSetupError, match="host root"):
        podman_backend.start(make_spec(bb_image, "/bin/true", uid_gid=(0, 0)))
