"""A newcomer's first hour, as an ordinary user (issue 10's evidence): root creates an account, clones this
checkout into its home, then - as that user, with a clean environment - runs the README's first command
(`scripts/serve.sh`, in the background on its own port) and the README's walkthrough to its last step.
Every wait has a time limit.

Root is needed to create the account, so this skips otherwise. To stay within a few minutes it seeds the
new home with the Debian tree mmdebstrap made for the test cache (the same file `serve.sh` would make,
keyed by the same mirror and packages); everything else (virtualenv, package, sample images) is built
from nothing the way a newcomer's first run builds it.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_readme_walkthrough import walkthrough_script
from tests.fixtures.samples import test_cache_dir
from tests.fixtures.server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def newcomer():
    if os.geteuid() != 0:
        pytest.skip("creating an ordinary user needs root")
    for tool in ("useradd", "userdel", "runuser", "git"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing")
    name = f"lab-new-{secrets.token_hex(3)}"
    # A regular account, like a person's: a home, a shell and (useradd's default) subordinate ids.
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=60)


def _as(user: pwd.struct_passwd, command: str, **kwargs) -> list[str]:
    env = ["HOME=" + user.pw_dir, "USER=" + user.pw_name, "LOGNAME=" + user.pw_name, "LANG=C.UTF-8",
           "PATH=/usr/local/bin:/usr/bin:/bin"]
    # The pip settings of this machine (a local package index), as the newcomer's own would be.
    env += [f"{k}={v}" for k, v in os.environ.items() if k.startswith("PIP_")]
    return ["runuser", "-u", user.pw_name, "--", "env", "-i", *env, "bash", "-c", command]


def test_readme_first_hour_as_an_ordinary_user(newcomer, tmp_path):
    started = time.monotonic()
    home = Path(newcomer.pw_dir)
    clone = home / "lightabaco"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=120)
    pip_conf = Path("/root/.config/pip/pip.conf")
    if pip_conf.exists():
        (home / ".config" / "pip").mkdir(parents=True)
        shutil.copy(pip_conf, home / ".config" / "pip" / "pip.conf")
    debian = sorted((test_cache_dir() / "build-cache" / "bases").glob("debian-*.tar"))
    if debian:
        bases = home / ".lightabaco" / "build-cache" / "bases"
        bases.mkdir(parents=True)
        shutil.copy(debian[-1], bases / debian[-1].name)
    subprocess.run(["chown", "-R", f"{newcomer.pw_uid}:{newcomer.pw_gid}", str(home)], check=True, timeout=60)
    home.chmod(0o700)  # a private home, as adduser makes them: nothing else may need to read the clone

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        server = subprocess.Popen(_as(newcomer, f"cd ~/lightabaco && exec scripts/serve.sh --port {port}"),
                                  stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    try:
        exports: dict[str, str] = {}
        deadline = time.monotonic() + 240  # venv + package + sample images, on a shared 2-core machine
        while "TOKEN" not in exports:
            assert time.monotonic() < deadline, f"serve.sh printed no exports in time:\n{log.read_text()[-3000:]}"
            assert server.poll() is None, f"serve.sh exited {server.returncode}:\n{log.read_text()[-3000:]}"
            line = server.stdout.readline()
            match = re.match(r"export (BASE|TOKEN)=(\S+)", line)
            if match:
                exports[match.group(1)] = match.group(2)
        assert exports["BASE"] == f"http://127.0.0.1:{port}"
        serve_s = time.monotonic() - started
        record = home / ".lightabaco" / "run" / "server.json"
        # The exports come out just before the API binds its port: wait (with a limit) until it answers,
        # as a person pasting them into another shell does without noticing.
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{exports['BASE']}/actors", timeout=5,
                                headers={"Authorization": f"Bearer {exports['TOKEN']}"}).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        # The walkthrough's bash blocks, in order, on stdin (the user cannot read pytest's 0700 tmp dirs).
        walk = subprocess.run(_as(newcomer, f"cd ~/lightabaco && export BASE={exports['BASE']} "
                                            f"TOKEN={exports['TOKEN']} WAIT_LIMIT=120 && bash -s"),
                              input=walkthrough_script(), capture_output=True, text=True, timeout=300)
        assert walk.returncode == 0, f"walkthrough failed:\n{walk.stdout[-2000:]}\n{walk.stderr[-3000:]}"
        out = walk.stdout
        assert re.search(r"^4$", out, re.M) and '"brightness": "medium"' in out   # wc's result, classify's
        assert "Contents of MSG: hello from tapipy" in out                        # the last step
        assert record.exists()
        # The CLI on the same home finds the server on this port without LIGHTABACO_URL.
        listing = subprocess.run(_as(newcomer, "~/lightabaco/.venv/bin/lightabaco actors list"),
                                 capture_output=True, text=True, timeout=60)
        assert listing.returncode == 0 and "wc" in listing.stdout, listing.stderr
        doctor = subprocess.run(_as(newcomer, "~/lightabaco/.venv/bin/lightabaco doctor"), capture_output=True,
                                text=True, timeout=120)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    assert not (home / ".lightabaco" / "run" / "server.json").exists()  # stopped cleanly: record removed
    print(f"newcomer: serve.sh ready in {serve_s:.0f} s, whole first hour in {time.monotonic() - started:.0f} s")
