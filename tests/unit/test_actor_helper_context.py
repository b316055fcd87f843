"""lightabaco.actor outside a sandbox: env parsing, binary reads from files and FIFOs, result datagrams."""

from __future__ import annotations

import json
import os
import pickle
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from lightabaco import actor


def test_json_message_given_as_python_repr_becomes_message_dict(monkeypatch):
    monkeypatch.setenv("MSG", str({"iterations": 3, "ok": True, "name": None}))
    monkeypatch.setenv("_abaco_Content_Type", "application/json")
    monkeypatch.setenv("_abaco_Content-Type", "application/json")
    monkeypatch.setenv("_abaco_actor_id", "A1")
    ctx = actor.get_context()
    assert ctx["message_dict"] == {"iterations": 3, "ok": True, "name": None}
    assert ctx.actor_id == "A1"
    assert ctx.content_type == "application/json"
    assert ctx["_abaco_actor_id"] == "A1"  # all of os.environ is merged, as agavepy does


def test_json_text_and_plain_strings(monkeypatch):
    monkeypatch.setenv("MSG", '{"a": true}')
    assert actor.get_context().message_dict == {"a": True}
    monkeypatch.setenv("MSG", "hello world")
    ctx = actor.get_context()
    assert ctx.message_dict == {} and ctx.raw_message == "hello world"
    assert len(ctx.raw_message_parse_log) == 2


def test_context_matches_tapipy_for_the_same_environment(monkeypatch):
    tapipy_actors = pytest.importorskip("tapipy.actors")
    monkeypatch.setenv("MSG", str({"k": [1, 2]}))
    monkeypatch.setenv("_abaco_Content-Type", "application/json")
    monkeypatch.setenv("_abaco_execution_id", "E1")
    theirs, ours = tapipy_actors.get_context(), actor.get_context()
    for key in ("raw_message", "content_type", "execution_id", "message_dict", "actor_id", "state"):
        assert ours[key] == theirs[key], key


def test_binary_message_from_regular_file(tmp_path: Path):
    data = os.urandom(300_000)
    path = tmp_path / "bin"
    path.write_bytes(data)
    assert actor.get_binary_message(str(path)) == data


def test_binary_message_from_prefilled_fifo(tmp_path: Path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # keeps the pipe open, as Abaco's worker does
    os.write(writer, b"abc" * 1000)
    try:
        assert actor.get_binary_message(str(path)) == b"abc" * 1000
    finally:
        os.close(writer)


def test_binary_message_missing_says_where(tmp_path: Path):
    with pytest.raises(actor.ActorHelperError, match="only works inside"):
        actor.get_binary_message(str(tmp_path / "nope"))


def _bound_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "r.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    return server, path


def test_results_are_datagrams_in_order(tmp_path: Path, monkeypatch):
    server, path = _bound_socket(tmp_path)
    monkeypatch.setattr(actor, "RESULTS_SOCKET_PATH", path)
    actor.send_bytes_result(b"first")
    actor.send_python_result({"answer": 42})
    assert server.recv(200_000) == b"first"
    assert pickle.loads(server.recv(200_000)) == {"answer": 42}  # cloudpickle output loads with pickle
    server.close()


def test_results_reject_non_bytes_and_oversize(tmp_path: Path, monkeypatch):
    server, path = _bound_socket(tmp_path)
    monkeypatch.setattr(actor, "RESULTS_SOCKET_PATH", path)
    with pytest.raises(actor.ActorHelperError, match="needs bytes"):
        actor.send_bytes_result("text")  # type: ignore[arg-type]
    with pytest.raises(actor.ActorHelperError, match="limit is 131072"):
        actor.send_bytes_result(b"x" * 131073)
    actor.send_bytes_result(b"x" * 131072)
    assert len(server.recv(300_000)) == 131072
    server.close()


def test_results_without_socket_explain(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(actor, "RESULTS_SOCKET_PATH", str(tmp_path / "missing.sock"))
    with pytest.raises(actor.ActorHelperError, match="results socket"):
        actor.send_bytes_result(b"x")


def test_update_state_posts_json_with_token(monkeypatch):
    seen: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's naming
            seen["path"] = self.path
            seen["token"] = self.headers.get("X-Tapis-Token")
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            out = json.dumps({"result": {"state": seen["body"]}, "status": "success"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("_abaco_api_server", f"http://127.0.0.1:{httpd.server_port}")
        monkeypatch.setenv("_abaco_access_token", "tok")
        monkeypatch.setenv("_abaco_actor_id", "XyZ")
        result = actor.update_state({"count": 2})
    finally:
        httpd.shutdown()
    assert seen == {"path": "/actors/XyZ/state", "token": "tok", "body": {"count": 2}}
    assert result == {"state": {"count": 2}}


def test_update_state_outside_execution(monkeypatch):
    monkeypatch.delenv("_abaco_actor_id", raising=False)
    with pytest.raises(actor.ActorHelperError, match="inside an execution"):
        actor.update_state({})
