"""Exit status, signal, failure kind and the one-sentence reason."""

from __future__ import annotations

from pathlib import Path

from lightabaco.sandbox.bwrap import build_command, build_env, parse_status
from lightabaco.sandbox.errors import ExecutionSetupError
from lightabaco.sandbox.outcome import Outcome, describe
from lightabaco.sandbox.types import ExecSpec, ImageConfig, Limits, PreparedImage

import pytest


def spec(**limits) -> ExecSpec:  # type: ignore[no-untyped-def]
    image = PreparedImage("sha256:0", Path("/nonexistent"), ImageConfig(cmd=["x"]))
    return ExecSpec(image=image, limits=Limits(**limits))


def d(o: Outcome | None = None, exit_code=0, failure=None, cpu_ns=0, tail=b"", **limits):  # type: ignore[no-untyped-def]
    return describe(spec(**limits), o or Outcome(), exit_code=exit_code, failure=failure,
                    cpu_ns=cpu_ns, log_tail=tail, runtime="bwrap")


def test_plain_exits_and_signals():
    assert d(exit_code=0).reason == "exited with status 0"
    r = d(exit_code=139)
    assert (r.exit_code, r.signal, r.reason) == (139, 11, "killed by SIGSEGV (exit status 139)")


def test_limits_and_kills():
    assert d(Outcome(ending=True, timed_out=True), exit_code=None, wall_timeout_s=2.5).reason == \
        "killed after 2.5 s wall-clock limit"
    r = d(Outcome(ending=True, killed=True, timed_out=True), exit_code=137)
    assert r.reason.startswith("force-quit") and r.signal == 9
    assert "limit of 64 processes" in d(Outcome(proc_limit=64), exit_code=137).reason
    assert "over the 100 MiB limit" in d(Outcome(memory_exceeded=200 << 20), exit_code=137,
                                         memory_bytes=100 << 20).reason
    assert d(exit_code=137, cpu_ns=int(2e9), cpu_seconds=2).reason == \
        "killed after using its 2 s cpu-time limit"
    assert d(exit_code=137, cpu_ns=int(0.1e9), cpu_seconds=2).reason == "killed by SIGKILL (exit status 137)"
    oom = d(exit_code=1, tail=b"Traceback...\nMemoryError\n", memory_bytes=64 << 20)
    assert "running out of memory" in oom.reason and "64 MiB" in oom.reason
    assert d(exit_code=1, tail=b"MemoryError").reason == "exited with status 1"  # no limit set
    forked = d(Outcome(proc_cap=30), exit_code=2, tail=b"/bin/sh: can't fork: Resource temporarily")
    assert forked.reason == "exited with status 2 after a fork failed at its limit of 30 processes"


def test_failures_name_the_fix():
    r = d(Outcome(failure_detail="bwrap: Can't mkdir /x"), exit_code=None, failure="setup")
    assert r.failure == "setup" and "bwrap: Can't mkdir /x" in r.reason and "doctor" in r.reason
    r = d(Outcome(failure_detail="bwrap: execvp /nope: No such file"), exit_code=127, failure="exec")
    assert (r.failure, r.exit_code) == ("exec", 127) and "Entrypoint" in r.reason
    r = d(Outcome(spawn_error="cannot start bwrap: No such file"), exit_code=None)
    assert r.failure == "setup" and "doctor" in r.reason
    # Killed during setup is reported as the kill, not as a setup failure.
    r = d(Outcome(ending=True, killed=True), exit_code=None, failure="setup")
    assert r.failure is None and r.exit_code == 137


def test_status_stream_split_anywhere():
    stream = b'{ "child-pid": 42, "ns": 1 }\n{ "exit-code": 3 }\n'
    for cut in range(len(stream)):
        docs, rest = parse_status(stream[:cut])
        docs2, rest2 = parse_status(rest + stream[cut:])
        merged: dict = {}
        for doc in docs + docs2:
            merged.update(doc)
        assert merged == {"child-pid": 42, "ns": 1, "exit-code": 3} and rest2 == b""


def test_env_layers_and_defaults():
    image = PreparedImage("sha256:0", Path("/x"), ImageConfig(env=["A=1", "B=2", "PATH=/img", "EQ=a=b"]))
    s = ExecSpec(image=image, env={"B": None, "C": "3", "_abaco_Content-Type": "str"})
    env = build_env(s, "host1", "/home/app")
    assert env == {"A": "1", "PATH": "/img", "EQ": "a=b", "C": "3", "_abaco_Content-Type": "str",
                   "HOME": "/home/app", "HOSTNAME": "host1"}
    with pytest.raises(ExecutionSetupError, match="cannot be passed"):
        build_env(ExecSpec(image=image, env={"X": "a\0b"}), "h", "/")


def test_command_docker_semantics():
    image = PreparedImage("sha256:0", Path("/x"), ImageConfig(entrypoint=["/ep"], cmd=["a", "b"]))
    assert build_command(ExecSpec(image=image)) == ["/ep", "a", "b"]
    assert build_command(ExecSpec(image=image, cmd=["c"])) == ["/ep", "c"]
    assert build_command(ExecSpec(image=image, cmd=[])) == ["/ep"]
    empty = PreparedImage("sha256:0", Path("/x"), ImageConfig())
    with pytest.raises(ExecutionSetupError, match="no Entrypoint or Cmd"):
        build_command(ExecSpec(image=empty))
