"""Log capture, results socket and binary data without any sandbox."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lightabaco.sandbox.channels import LogSink, ResultsSocket, write_binary_data
from lightabaco.sandbox.errors import ExecutionSetupError
from lightabaco.sandbox.types import MAX_RESULT_BYTES


def test_log_sink_copies_everything_without_a_cap(tmp_path):
    sink = LogSink(tmp_path / "a.log", None)
    os.write(sink.write_fd, b"hello ")
    os.write(sink.write_fd, b"world\n")
    assert sink.pump() is True
    sink.close_write_end()
    assert sink.pump() is False
    sink.close()
    assert (tmp_path / "a.log").read_bytes() == b"hello world\n" and not sink.truncated


def test_log_sink_caps_marks_once_and_keeps_draining(tmp_path):
    sink = LogSink(tmp_path / "b.log", 10)
    for chunk in (b"12345", b"67890abc", b"def" * 1000):
        os.write(sink.write_fd, chunk)
        sink.pump()
    sink.close_write_end()
    while sink.pump():
        pass
    sink.close()
    data = (tmp_path / "b.log").read_bytes()
    assert data.startswith(b"1234567890\n LOG LIMIT EXCEEDED")
    assert data.count(b"LOG LIMIT EXCEEDED") == 1 and b"abc" not in data
    assert sink.truncated and sink.written == 10 and sink.dropped == 3 + 3000
    assert sink.tail().endswith(b"defdef")  # the tail keeps what was dropped, for explanations


def test_log_sink_refuses_an_unwritable_path(tmp_path):
    with pytest.raises(ExecutionSetupError, match="cannot create the log file"):
        LogSink(tmp_path / "missing" / "x.log", 10)


def _sender(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    s.connect(str(path))
    return s


def test_results_in_order_and_oversize_rejected(tmp_path):
    seen = []
    rs = ResultsSocket(tmp_path / "r.sock", on_result=seen.append)
    s = _sender(tmp_path / "r.sock")
    s.send(b"one")
    s.send(b"x" * (MAX_RESULT_BYTES + 1))
    s.send(b"y" * MAX_RESULT_BYTES)
    s.send(b"")
    rs.drain()
    assert seen == [b"one", b"y" * MAX_RESULT_BYTES, b""]
    assert rs.results == []  # handed over, not also held in memory
    assert rs.rejected == 1
    rs.close()


def test_results_survive_a_failing_callback(tmp_path):
    def boom(data: bytes) -> None:
        raise RuntimeError("callback bug")

    rs = ResultsSocket(tmp_path / "r.sock", on_result=boom)
    s = _sender(tmp_path / "r.sock")
    s.send(b"a")
    s.send(b"b")
    rs.drain()
    assert rs.results == [b"a", b"b"]
    rs.close()


def test_results_kept_in_order_without_a_callback(tmp_path):
    rs = ResultsSocket(tmp_path / "r.sock")
    s = _sender(tmp_path / "r.sock")
    for item in (b"1", b"2", b"3"):
        s.send(item)
    rs.drain()
    assert rs.results == [b"1", b"2", b"3"]
    rs.close()


def test_results_socket_binds_paths_longer_than_sun_path(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    rs = ResultsSocket(deep / "results.sock")
    assert (deep / "results.sock").is_socket()
    rs.close()


def test_binary_data_is_a_read_only_regular_file(tmp_path):
    write_binary_data(tmp_path / "bd", b"\0\1" * 100)
    st = (tmp_path / "bd").stat()
    assert (tmp_path / "bd").read_bytes() == b"\0\1" * 100 and st.st_mode & 0o777 == 0o444
    write_binary_data(tmp_path / "empty", None)
    assert (tmp_path / "empty").read_bytes() == b""


def test_results_beyond_the_total_cap_are_rejected(tmp_path, monkeypatch):
    import lightabaco.sandbox.channels as channels

    monkeypatch.setattr(channels, "MAX_KEPT_RESULT_BYTES", 10)
    rs = ResultsSocket(tmp_path / "r.sock")
    s = _sender(tmp_path / "r.sock")
    for chunk in (b"1234", b"5678", b"9abc", b"d"):
        s.send(chunk)
    rs.drain()
    assert rs.results == [b"1234", b"5678", b"d"] and rs.rejected == 1
    rs.close()


def test_drain_takes_a_bounded_batch(tmp_path):
    rs = ResultsSocket(tmp_path / "r.sock")
    s = _sender(tmp_path / "r.sock")
    for i in range(8):
        s.send(b"%d" % i)
    rs.drain(max_items=3)
    assert len(rs.results) == 3
    rs.drain(max_items=None)
    assert rs.results == [b"%d" % i for i in range(8)]
    rs.close()
