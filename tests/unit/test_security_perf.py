"""The helper's spawn operation (issue 14) without bwrap: descriptors land at the numbers asked for
and nowhere else, failures come back as errors, and the end is reported from the real wait status."""

from __future__ import annotations

import os
import select

import pytest

from lightabaco.sandbox.rlimit_helper import RlimitHelper


@pytest.fixture
def helper():  # -> RlimitHelper
    h = RlimitHelper(None)
    yield h
    h.close()


def _run(helper: RlimitHelper, argv: list[str], fds: dict[int, int]) -> tuple[int, bytes]:
    r, w = os.pipe()
    try:
        proc = helper.spawn(argv, {"PATH": "/usr/bin:/bin"}, {**fds, 1: w, 2: w})
    finally:
        os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    assert select.select([proc.pidfd], [], [], 10)[0], "no exit seen through the pidfd"
    status, rusage, io = proc.reap()
    proc.close()
    assert rusage.ru_utime >= 0 and set(io) == {"rchar", "wchar", "read_bytes", "write_bytes"}
    return os.waitstatus_to_exitcode(status), out


def test_descriptors_land_at_their_numbers_and_nothing_else_leaks(helper):
    # Targets chosen to collide with the numbers the helper itself receives them at (3, 4, ...).
    a_r, a_w = os.pipe()
    b = os.memfd_create("b")
    os.write(a_w, b"from-a")
    os.close(a_w)
    os.write(b, b"from-b")
    os.lseek(b, 0, 0)
    try:
        code, out = _run(helper, ["/bin/sh", "-c", "cat <&4; cat <&3; echo; ls /proc/self/fd/; exit 3"],
                         {3: b, 4: a_r})
    finally:
        os.close(a_r)
        os.close(b)
    assert code == 3
    lines = out.decode().split("\n")
    assert lines[0] == "from-afrom-b"
    # sh's 0-4, plus ls's own directory descriptor (one more number)
    listed = sorted(int(x) for x in " ".join(lines[1:]).split())
    assert listed[:5] == [0, 1, 2, 3, 4] and len(listed) <= 6, listed


def test_a_missing_program_is_an_error_not_a_process(helper):
    with pytest.raises(OSError) as info:
        helper.spawn(["/nonexistent/runtime"], {}, {1: 1, 2: 2})
    assert info.value.errno == 2
    # The helper still serves after the failure.
    assert _run(helper, ["/bin/true"], {})[0] == 0


def test_killed_runtime_reports_its_signal(helper):
    r, w = os.pipe()
    proc = helper.spawn(["/bin/sleep", "30"], {}, {1: w, 2: w})
    os.close(w)
    import signal

    signal.pidfd_send_signal(proc.pidfd, signal.SIGKILL)
    status, _, _ = proc.reap()
    proc.close()
    os.close(r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_nul_in_an_argument_is_refused(helper):
    from lightabaco.sandbox.errors import ExecutionSetupError

    with pytest.raises((ExecutionSetupError, ValueError)):
        helper.spawn(["/bin/echo", "a\0b"], {}, {1: 1, 2: 2})
