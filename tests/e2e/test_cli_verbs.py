"""Every `lightabaco` verb against a live server with the sample images: in-process CLI calls, and (in
test_every_verb_through_the_real_command_line) the installed command itself, as a user types it."""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path

import cloudpickle
import pytest

from lightabaco.cli.commands import main

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


class Cli:
    def __init__(self, server):
        self.server = server

    def __call__(self, *argv: str, ok: bool = True) -> str:
        out, err = io.StringIO(), io.StringIO()
        code = main(["--url", self.server.url, "--token", self.server.token, "--home", str(self.server.home),
                     *argv], out=out, err=err)
        if ok:
            assert code == 0, f"lightabaco {' '.join(argv)} -> {code}\n{err.getvalue()}"
        self.code, self.err = code, err.getvalue()
        return out.getvalue()

    def json(self, *argv: str):
        return json.loads(self("--json", *argv))


@pytest.fixture
def cli(sample_server):
    return Cli(sample_server)


def _wait_ready(cli: Cli, name: str) -> None:
    for _ in range(200):
        if cli.json("actors", "get", name)["status"] == "READY":
            return
    raise AssertionError(f"{name} never became READY")


def test_actor_lifecycle(cli):
    actor_id = cli("actors", "create", "--image", "abacosamples/test", "--name", "t1", "--env", "GREETING=hi").strip()
    assert re.fullmatch(r"[A-Za-z0-9]+", actor_id)
    _wait_ready(cli, "t1")
    assert "t1" in cli("actors", "list") and "abacosamples/test" in cli("actors", "list")
    details = cli.json("actors", "get", actor_id)
    assert details["default_environment"] == {"GREETING": "hi"}
    cli("actors", "update", "t1", "--description", "updated")  # name works where ids are expected
    updated = cli.json("actors", "get", "t1")
    assert updated["description"] == "updated" and updated["default_environment"] == {"GREETING": "hi"}
    assert "deleted" in cli("actors", "rm", "t1")
    assert all(a["id"] != actor_id for a in cli.json("actors", "list"))


def test_send_executions_logs_results(cli):
    cli("actors", "create", "--image", "abacosamples/wc", "--name", "wc")
    _wait_ready(cli, "wc")
    assert cli("send", "wc", "five words for the count", "--sync").strip() == "5"
    execution = cli.json("send", "wc", "two words", "--wait")
    assert execution["status"] == "COMPLETE"
    eid = execution["execution_id"]
    assert "Number of words: 2" in cli("logs", "wc", eid)
    assert "Number of words: 2" in cli("logs", "wc", eid, "--follow")
    assert cli("results", "wc", eid) == "2"
    cli("results", "wc", eid, ok=False)  # popped: nothing left, exit status 3 and a word saying so
    assert cli.code == 3 and "no result left" in cli.err
    listing = cli("executions", "wc")
    assert eid in listing and "total_executions=2" in listing
    assert cli.json("executions", "wc", eid)["exit_code"] == 0
    assert cli("messages", "wc").strip() == "0"


def test_send_json_env_and_binary(cli, tmp_path):
    cli("actors", "create", "--image", "abacosamples/test", "--name", "echo")
    _wait_ready(cli, "echo")
    eid = cli.json("send", "echo", "--json-message", '{"k": [1, 2]}', "--env", "EXTRA=yes", "--wait")["execution_id"]
    logs = cli("logs", "echo", eid)
    assert "Contents of MSG: {'k': [1, 2]}" in logs and "EXTRA=yes" in logs
    cli("actors", "create", "--image", "abacosamples/py3_func", "--name", "func")
    _wait_ready(cli, "func")
    payload = tmp_path / "call.pkl"
    payload.write_bytes(cloudpickle.dumps({"func": lambda x: x * 7, "args": [6], "kwargs": {}}))
    eid = cli.json("send", "func", "--binary", str(payload), "--wait")["execution_id"]
    out_file = tmp_path / "result.bin"
    cli("results", "func", eid, "--all", "--output", str(out_file))
    assert pickle.loads(out_file.read_bytes()) == 42


def test_workers_and_state(cli):
    cli("actors", "create", "--image", "abacosamples/test", "--name", "pool")
    _wait_ready(cli, "pool")
    before = len(cli.json("workers", "pool"))
    cli("workers", "pool", "--add", "1")
    for _ in range(100):
        if len(cli.json("workers", "pool")) == before + 1:
            break
    assert len(cli.json("workers", "pool")) == before + 1
    assert "READY" in cli("workers", "pool") or "REQUESTED" in cli("workers", "pool")
    cli("actors", "create", "--image", "abacosamples/test", "--name", "keeper", "--stateful")
    _wait_ready(cli, "keeper")
    cli("state", "keeper", "--set", '{"count": 3}')
    assert json.loads(cli("state", "keeper")) == {"count": 3}


def test_errors_say_what_to_do(cli):
    cli("actors", "get", "no-such-actor", ok=False)
    assert cli.code == 1 and "not found" in cli.err
    cli("actors", "create", ok=False)
    assert "needs --image" in cli.err
    cli("send", "whatever", ok=False)
    assert "give a MESSAGE" in cli.err
    out, err = io.StringIO(), io.StringIO()
    assert main(["--url", cli.server.url, "--token", "wrong", "actors", "list"], out=out, err=err) == 1
    assert "401" in err.getvalue() and "LIGHTABACO_TOKEN" in err.getvalue()


def test_token_users_doctor_and_local_images(cli, tmp_path):
    assert cli("token").strip() == cli.server.token
    alice = cli("users", "add", "alice").strip()
    assert alice.count(".") == 2  # a JWT
    assert "alice" in cli("users", "list")
    checks = cli.json("doctor")
    assert {c["name"] for c in checks} >= {"user namespaces", "backend bwrap", "home filesystem", "free disk"}
    assert "abacosamples/wc" in cli("images", "list")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Containerfile").write_text("FROM lightabaco/busybox\nCMD [\"echo\", \"built by the cli\"]\n")
    built = cli.json("images", "build", str(context), "--tag", "cli/built", "--network", "none")
    assert built["id"].startswith("sha256:") and not built["cached"]
    assert cli.json("images", "build", str(context), "--tag", "cli/built", "--network", "none")["cached"]
    assert "cli/built" in cli("images", "list")
    cli("images", "rm", "cli/built")
    assert "cli/built" not in cli("images", "list")


def _serve_once(home: Path, port: int) -> str:
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTABACO_")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "lightabaco"), "serve", "--home", str(home),
                             "--port", str(port), "--workers", "1", "--no-samples"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0] == f"export BASE=http://127.0.0.1:{port}\n"
        token = lines[1].strip().removeprefix("export TOKEN=")
        for _ in range(100):
            try:
                r = requests.get(f"http://127.0.0.1:{port}/actors", headers={"Authorization": f"Bearer {token}"})
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert r.status_code == 200
        return token
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean stop


def test_serve_prints_the_exports_and_restarts_with_the_same_token():
    import shutil

    from tests.fixtures.samples import reachable_tmpdir
    from tests.fixtures.server import free_port

    home = reachable_tmpdir("lightabaco-serve-")
    try:
        first = _serve_once(home, free_port())
        assert _serve_once(home, free_port()) == first  # safe to run twice: same home, same token
        assert (home / "token").stat().st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_images_import_and_pull(registry, tmp_path):
    from tests.fixtures.oci import busybox_layout

    home = tmp_path / "home"
    busybox_layout(tmp_path / "layout")
    layout = tmp_path / "layout"
    registry.push_image(busybox_layout(), "cli/pulled", "2")

    def run(*argv: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        assert main(["--home", str(home), *argv], out=out, err=err) == 0, err.getvalue()
        return out.getvalue()

    assert run("images", "import", str(layout), "--tag", "cli/imported").startswith("imported ")
    pulled = json.loads(run("--json", "images", "pull", registry.ref("cli/pulled", "2")))
    assert pulled["id"].startswith("sha256:")
    listing = run("images", "list")
    assert "cli/imported" in listing and "cli/pulled:2" in listing


def test_logs_follow_waits_for_a_running_execution(cli):
    cli("actors", "create", "--image", "abacosamples/sleep_loop", "--name", "loop")
    _wait_ready(cli, "loop")
    eid = cli("send", "loop", "--json-message", '{"iterations": 4, "sleep": 0.25}').strip()
    followed = cli("logs", "loop", eid, "--follow", "--interval", "0.1")
    assert followed.index("Iteration 1 of 4") < followed.index("Iteration 4 of 4") < followed.index("Sleep loop done.")
    assert cli.json("executions", "loop", eid)["status"] == "COMPLETE"


# -- the real command line ---------------------------------------------------------------------------

def _leaf_commands() -> list[tuple[str, ...]]:
    """Every verb and sub-command the parser knows, e.g. ("images", "build"), ("token",)."""
    import argparse

    from lightabaco.cli.commands import build_parser

    found: list[tuple[str, ...]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs and path:
            found.append(path)
        for action in subs:
            for name, child in action.choices.items():
                walk(child, path + (name,))

    walk(build_parser(), ())
    return found


class Command:
    """The installed `lightabaco` (or `python -m lightabaco`), run as a subprocess with a clean env:
    no LIGHTABACO_URL, so the server is found through <home>/run/server.json."""

    def __init__(self, home: Path):
        import os
        import sys

        self.home = home
        self.exe = Path(sys.executable).parent / "lightabaco"
        self.python = sys.executable
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTABACO_")}
        self.ran: set[tuple[str, ...]] = set()

    def __call__(self, *argv: str, code: int | None = 0, module: bool = False, home: Path | None = None,
                 stdin: str | None = None):
        import subprocess

        # The global options go AFTER the verb (and its sub-command): accepted in either position.
        argv_full = [*argv, "--home", str(home or self.home)]
        head = [self.python, "-m", "lightabaco"] if module else [str(self.exe)]
        proc = subprocess.run(head + argv_full, env=self.env, capture_output=True, text=True, timeout=120,
                              input=stdin, cwd="/")
        words = tuple(a for a in argv if not a.startswith("-"))
        for leaf in _leaf_commands():
            if words[:len(leaf)] == leaf:
                self.ran.add(leaf)
        if code is not None:
            assert proc.returncode == code, f"lightabaco {' '.join(argv)} -> {proc.returncode}\n{proc.stderr}"
        return proc


def test_every_verb_through_the_real_command_line(sample_server, tmp_path):
    import subprocess

    assert (sample_server.home / "run" / "server.json").exists(), "the server did not record where it listens"
    run = Command(sample_server.home)
    leaves = _leaf_commands()
    # -h of every verb and sub-command, half of them through `python -m lightabaco`.
    for i, leaf in enumerate([(verb,) for verb in {leaf[0] for leaf in leaves}] + leaves):
        proc = subprocess.run(([run.python, "-m", "lightabaco"] if i % 2 else [str(run.exe)]) + [*leaf, "-h"],
                              env=run.env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and f"usage: lightabaco {' '.join(leaf)}" in proc.stdout, (leaf, proc.stderr)
    assert subprocess.run([str(run.exe), "users", "--help"], env=run.env, capture_output=True).returncode == 0
    version = subprocess.run([str(run.exe), "--version"], env=run.env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("lightabaco ")

    # Actors and messages, against the live server found through the home (no --url anywhere).
    actor = run("actors", "create", "--image", "abacosamples/wc", "--name", "cmdline").stdout.strip()
    assert actor in run("actors", "list").stdout
    for _ in range(300):
        if json.loads(run("actors", "get", "cmdline", "--json").stdout)["status"] == "READY":
            break
    run("actors", "update", "cmdline", "--description", "from the command line", module=True)
    assert run("send", "cmdline", "three words here", "--sync").stdout.strip() == "3"
    eid = run("send", "cmdline", "two words", "--wait").stdout.split()[0]
    assert "Number of words: 2" in run("logs", "cmdline", eid).stdout
    assert run("results", "cmdline", eid).stdout == "2"
    empty = run("results", "cmdline", eid, code=3)
    assert "no result left" in empty.stderr
    assert eid in run("executions", "cmdline").stdout
    assert run("messages", "cmdline").stdout.strip() == "0"
    assert "WORKER" in run("workers", "cmdline").stdout
    keeper = run("actors", "create", "--image", "abacosamples/test", "--name", "cmdstate", "--stateful")
    assert keeper.stdout.strip()
    run("state", "cmdstate", "--set", '{"n": 1}')
    assert json.loads(run("state", "cmdstate").stdout) == {"n": 1}
    assert "deleted" in run("actors", "rm", "cmdline", "cmdstate").stdout

    # Verbs on a home of their own (so rotating the token leaves the live server's alone).
    scratch = tmp_path / "home"
    first = run("token", home=scratch).stdout.strip()
    rotated = run("token", "--rotate", home=scratch).stdout.strip()
    assert rotated != first and run("token", home=scratch).stdout.strip() == rotated
    assert run("users", "add", "carol", "--role", "limited", home=scratch).stdout.count(".") == 2
    assert "carol" in run("users", "list", home=scratch, module=True).stdout
    assert run("users", "token", "carol", home=scratch).stdout.count(".") == 2
    assert "revoked carol" in run("users", "revoke", "carol", home=scratch).stdout
    doctor = run("doctor", "--json", home=scratch, code=None)
    assert doctor.returncode in (0, 1) and {c["name"] for c in json.loads(doctor.stdout)} >= {"busybox", "python"}

    # Local images: samples (busybox only), build, a rebuild that replaces the tag, list, prune, rm.
    assert "abacosamples/test" in run("images", "samples", "--no-python", home=scratch).stdout
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Containerfile").write_text('FROM lightabaco/busybox\nCMD ["echo", "one"]\n')
    run("images", "build", str(context), "--tag", "me/x", "--network", "none", home=scratch)
    (context / "Containerfile").write_text('FROM lightabaco/busybox\nCMD ["echo", "two"]\n')
    rebuilt = run("images", "build", str(context), "--tag", "me/x", "--network", "none", home=scratch)
    assert "stays on disk until `lightabaco images prune`" in rebuilt.stderr
    listing = run("images", "list", home=scratch).stdout
    assert "me/x" in listing and "<none>" in listing and "on disk" in listing
    assert "freed" in run("images", "prune", home=scratch).stdout
    assert "<none>" not in run("images", "list", home=scratch).stdout
    layout = tmp_path / "layout"
    from tests.fixtures.oci import busybox_layout

    busybox_layout(layout)
    assert run("images", "import", str(layout), "--tag", "me/imported", home=scratch).stdout.startswith("imported")
    assert "removed" in run("images", "rm", "me/imported", home=scratch).stdout
    # A pull from an address nothing listens on: the verb parses and fails with a message (exit 1).
    from tests.fixtures.server import free_port

    failed = run("images", "pull", f"127.0.0.1:{free_port()}/me/x:1", "--insecure", home=scratch, code=1)
    assert failed.stderr.startswith("lightabaco: ")

    # serve: runs in the foreground, records its address, removes it on a clean stop.
    import signal
    import time

    port = free_port()
    server = subprocess.Popen([str(run.exe), "serve", "--port", str(port), "--no-samples", "--workers", "1",
                               "--home", str(scratch)], env=run.env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    run.ran.add(("serve",))
    try:
        assert server.stdout.readline() == f"export BASE=http://127.0.0.1:{port}\n"
        record = scratch / "run" / "server.json"
        deadline = time.monotonic() + 30
        while not record.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads(record.read_text())["url"] == f"http://127.0.0.1:{port}"
        assert record.stat().st_mode & 0o777 == 0o644
        for _ in range(100):  # the CLI on that home reaches it on its non-default port
            listing = run("actors", "list", home=scratch, code=None)
            if listing.returncode == 0:
                break
            time.sleep(0.1)
        assert listing.returncode == 0 and listing.stdout.startswith("ID")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert not (scratch / "run" / "server.json").exists()

    assert set(leaves) <= run.ran, f"verbs the test did not run: {sorted(set(leaves) - run.ran)}"
