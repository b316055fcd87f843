"""Why the platform stopped an execution reaches the user: final_state.Error and a last log line."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from lightabaco.abaco import messages
from lightabaco.sandbox.types import ExecResult
from lightabaco.store.models import Execution, Log
from lightabaco.workers import runner as runner_mod
from lightabaco.workers.runner import claim_next, stop_reason, with_reason_line
from tests.unit.test_service_runner import FakeBackend, FakeExecution, make_runner, setup_actor


def result(**kw) -> ExecResult:
    base = ExecResult("e1", 0, None, False, False, None, "exited with status 0", Path("/nonexistent"),
                      False, [], 0, 0, {}, 0, 0.1, time.time(), time.time(), "test")
    return dataclasses.replace(base, **kw)


def test_plain_exits_have_no_reason():
    assert stop_reason(result()) == ""
    assert stop_reason(result(exit_code=3, reason="exited with status 3")) == ""


def test_limits_kills_and_failures_have_the_sandbox_reason():
    cases = [
        result(exit_code=137, timed_out=True, reason="killed after 2 s wall-clock limit"),
        result(exit_code=137, killed=True, reason="force-quit on request (exit status 137)"),
        result(exit_code=None, failure="setup", reason="the sandbox could not be set up: x"),
        # Limits the sandbox reports without the timed_out/killed flags:
        result(exit_code=137, signal=9,
               reason="killed: it reached its limit of 1024 processes (a fork bomb?)"),
        result(exit_code=137, signal=9,
               reason="killed: its processes used 86 MiB of memory, over the 64 MiB limit"),
        result(exit_code=1,
               reason="exited with status 1 after running out of memory (limit 64 MiB per process)"),
    ]
    for r in cases:
        assert stop_reason(r) == r.reason


def test_reason_line_goes_after_output_and_marker():
    assert with_reason_line("", "") == ""
    assert with_reason_line("out\n", "") == "out\n"
    assert with_reason_line("", "killed") == "[lightabaco] killed\n"
    assert with_reason_line("out\n", "killed") == "out\n[lightabaco] killed\n"
    marked = "x" + runner_mod.TRUNCATION_MARKER
    assert with_reason_line(marked, "killed") == marked + "\n[lightabaco] killed\n"


class LimitedExecution(FakeExecution):
    """Ends as the watchdog ends a fork bomb: SIGKILL, no timed_out/killed flag."""

    def _result(self) -> ExecResult:
        return dataclasses.replace(super()._result(), exit_code=137, signal=9,
                                   reason="killed: it reached its limit of 1024 processes (a fork bomb?)")


class LimitedBackend(FakeBackend):
    def start(self, spec):
        self.specs.append(spec)
        self.last = LimitedExecution(spec, **self.kw)
        return self.last


def test_runner_records_the_reason_in_final_state_and_logs(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    messages.send_message(s, admin, a["id"], "hi", messages.STR, {})
    runner = make_runner(service_env, worker, LimitedBackend(output=b"forking\n"))
    runner.execute(*claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir))
    ex = Execution.get()
    reason = "killed: it reached its limit of 1024 processes (a fork bomb?)"
    assert ex.status == "COMPLETE" and ex.exit_code == 137
    assert ex.final_state["Error"] == reason
    assert Log.get().text == f"forking\n[lightabaco] {reason}\n"


def test_runner_keeps_plain_logs_plain(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    messages.send_message(s, admin, a["id"], "hi", messages.STR, {})
    runner = make_runner(service_env, worker, FakeBackend(output=b"hello\n"))
    runner.execute(*claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir))
    assert Execution.get().final_state["Error"] == "" and Log.get().text == "hello\n"


def test_file_flood_reason_and_tmpfs_count():
    import os

    from lightabaco.sandbox.execution import tmpfs_files
    from lightabaco.sandbox.outcome import Outcome, describe
    from lightabaco.sandbox.types import ExecSpec, ImageConfig, PreparedImage

    spec = ExecSpec(image=PreparedImage("sha256:0", Path("/nonexistent"), ImageConfig(cmd=["x"])))
    d = describe(spec, Outcome(files_exceeded=(70000, 65536)), exit_code=None, failure=None, cpu_ns=0,
                 log_tail=b"", runtime="bwrap")
    assert d.exit_code == 137 and d.failure is None
    assert d.reason == "killed: it created 70000 files in /tmp and /dev/shm, over the limit of 65536"
    assert tmpfs_files(2**22 + 12345) == 0  # no such process: never a reason to kill
    assert tmpfs_files(os.getpid()) >= 0
