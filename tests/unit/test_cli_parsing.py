"""The `lightabaco` command without a server: parsing, output helpers, progress bars, the client's errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from lightabaco.cli import commands as cli
from lightabaco.cli.client import Client, ClientError, resolve_token, resolve_url
from lightabaco.cli.progress import ProgressBar, make_progress


def test_global_options_before_or_after_the_verb():
    parser = cli.build_parser()
    a = parser.parse_args(["--url", "http://x:1", "--json", "actors", "list"])
    b = parser.parse_args(["actors", "list", "--url", "http://x:1", "--json"])
    assert (a.url, a.json) == (b.url, b.json) == ("http://x:1", True)
    c = parser.parse_args(["--url", "http://y:2", "send", "wc", "hi", "--sync", "-e", "A=1"])
    assert c.url == "http://y:2" and c.sync and c.env == ["A=1"] and c.message == "hi"


def test_no_verb_prints_help_and_returns_usage():
    err = io.StringIO()
    assert cli.main([], out=io.StringIO(), err=err) == cli.EXIT_USAGE
    assert "serve" in err.getvalue() and "doctor" in err.getvalue()


def test_key_values_are_checked():
    assert cli.kv(["A=1", "B=x=y"], "--env") == {"A": "1", "B": "x=y"}
    with pytest.raises(cli.CliError, match="--env must be KEY=VALUE"):
        cli.kv(["oops"], "--env")


def test_actor_fields_from_flags():
    args = cli.build_parser().parse_args([
        "actors", "create", "--image", "img", "--name", "n", "--stateful", "-e", "K=V", "--hint", "sync",
        "--cron", "now + 1 hour", "--cron-on", "off", "--max-workers", "3", "--field", "mem_limit=\"1g\"",
        "--field", "log_ex=60"])
    assert cli._actor_fields(args) == {
        "image": "img", "name": "n", "stateless": False, "default_environment": {"K": "V"}, "hints": ["sync"],
        "cron_schedule": "now + 1 hour", "cron_on": False, "max_workers": 3, "mem_limit": "1g", "log_ex": 60}


def test_table_and_camel_keys():
    out = io.StringIO()
    cli.table([{"id": "A", "executionId": "E1"}, {"id": "BB", "execution_id": "E2"}],
               [("id", "ID"), ("execution_id", "EXECUTION")], out)
    assert out.getvalue().splitlines() == ["ID  EXECUTION", "A   E1", "BB  E2"]


def test_default_home_for_root_and_users(monkeypatch):
    monkeypatch.delenv("LIGHTABACO_HOME", raising=False)
    monkeypatch.setattr(cli.os, "getuid", lambda: 0)
    assert cli.default_home() == Path("/var/lib/lightabaco")
    monkeypatch.setattr(cli.os, "getuid", lambda: 1000)
    assert cli.default_home() == Path.home() / ".lightabaco"
    monkeypatch.setenv("LIGHTABACO_HOME", "/srv/la")
    assert cli.default_home() == Path("/srv/la")


def test_url_and_token_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("LIGHTABACO_URL", raising=False)
    monkeypatch.delenv("LIGHTABACO_TOKEN", raising=False)
    assert resolve_url(None) == "http://127.0.0.1:8000"
    monkeypatch.setenv("LIGHTABACO_URL", "http://h:9/")
    assert resolve_url(None) == "http://h:9"
    (tmp_path / "token").write_text("from-file\n")
    assert resolve_token(None, tmp_path) == "from-file"
    monkeypatch.setenv("LIGHTABACO_TOKEN", "from-env")
    assert resolve_token(None, tmp_path) == "from-env"
    assert resolve_token("explicit", tmp_path) == "explicit"


def _client(handler) -> Client:
    return Client("http://test", "tok", transport=httpx.MockTransport(handler))


def test_client_unwraps_envelopes_and_sends_the_token():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers["Authorization"]
        seen["params"] = dict(request.url.params)
        return httpx.Response(200, json={"result": {"execution_id": "E"}, "status": "success"})

    assert _client(handler).send_message("A", "hi", env={"X": "1"}) == {"execution_id": "E"}
    assert seen == {"auth": "Bearer tok", "params": {"X": "1"}}


def test_client_errors_carry_the_server_message_and_a_hint():
    def handler(request):
        return httpx.Response(401, json={"message": "Invalid token.", "status": "error", "result": None})

    with pytest.raises(ClientError, match=r"401: Invalid token\. \(pass --token") as info:
        _client(handler).list_actors()
    assert info.value.status == 401


def test_client_unreachable_server_says_how_to_start_it():
    def handler(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(ClientError, match="lightabaco serve"):
        _client(handler).list_actors()


def test_sync_send_returns_raw_bytes_and_binary_sets_content_type():
    def handler(request):
        assert request.url.params["_abaco_synchronous"] == "true"
        assert request.headers["Content-Type"] == "application/octet-stream"
        return httpx.Response(200, content=b"\x00raw", headers={"Content-Type": "application/octet-stream"})

    assert _client(handler).send_message("A", binary=b"data", sync=True) == b"\x00raw"


def test_cli_reports_client_errors_without_traceback(monkeypatch):
    monkeypatch.setattr(cli, "Client", lambda *a, **k: _client(
        lambda r: httpx.Response(404, json={"message": "Actor not found.", "result": None})))
    err = io.StringIO()
    assert cli.main(["actors", "get", "X"], out=io.StringIO(), err=err) == cli.EXIT_ERROR
    assert err.getvalue().strip() == "lightabaco: 404: Actor not found."


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_terminals():
    assert make_progress(io.StringIO()) is None
    stream = Tty()
    bar = make_progress(stream)
    assert isinstance(bar, ProgressBar)
    bar("pull", 5_000_000, 10_000_000, "layer 1/2")
    bar("pull", 10_000_000, 10_000_000, "layer 1/2")
    bar("unpack", 3, None, "rootfs")
    bar.close()
    text = stream.getvalue()
    assert "[##############..............]  50%  5.0 MB/10.0 MB  layer 1/2" in text
    assert "100%" in text and "\n\runpack" in text and text.endswith("\n")


def test_json_output_is_json(monkeypatch, tmp_path):
    out = io.StringIO()
    assert cli.main(["--json", "--home", str(tmp_path), "images", "list"], out=out, err=io.StringIO()) == 0
    assert json.loads(out.getvalue()) == []
