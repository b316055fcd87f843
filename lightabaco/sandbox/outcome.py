"""Turning what happened to an execution into exit code, signal, failure kind and one sentence."""

from __future__ import annotations

import signal as signal_mod
from dataclasses import dataclass

from .types import ExecSpec

# What a process prints when an allocation fails under RLIMIT_DATA: Python, glibc/strerror, Go, Java.
_OOM_HINTS = (b"MemoryError", b"Cannot allocate memory", b"out of memory", b"OutOfMemoryError")
# ... and when fork() fails under RLIMIT_NPROC: busy box sh, bash, Python.
_NPROC_HINTS = (b"can't fork", b"fork: retry", b"fork: Resource temporarily unavailable",
                b"BlockingIOError: [Errno 11]")


@dataclass
class Outcome:
    """Facts the monitor collects while the execution runs."""

    ending: bool = False  # a kill is under way; no further limit checks
    timed_out: bool = False
    killed: bool = False  # Execution.kill()
    proc_limit: int | None = None  # watchdog: stopped at this many processes
    proc_cap: int | None = None  # the process limit in force (for explaining failed forks)
    memory_exceeded: int | None = None  # watchdog: bytes counted when it was stopped
    memory_shared: int = 0  # ... of which shared memory (SysV, memfds, /tmp and /dev/shm)
    limit_error: str | None = None  # a limit could not be put in place: the actor never ran
    # watchdog: (files in the writable tmpfs mounts, the limit) when it was stopped
    files_exceeded: tuple[int, int] | None = None
    spawn_error: str | None = None  # the runtime binary itself could not be started
    internal_error: str | None = None
    failure_detail: str = ""  # the runtime's own message for a setup/exec failure


@dataclass
class Described:
    exit_code: int | None
    signal: int | None
    failure: str | None
    reason: str


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def _signal_name(sig: int) -> str:
    try:
        return signal_mod.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def describe(spec: ExecSpec, o: Outcome, *, exit_code: int | None, failure: str | None,
             cpu_ns: int, log_tail: bytes, runtime: str) -> Described:
    limits = spec.limits
    if o.spawn_error:
        return Described(None, None, "setup",
                         f"the sandbox could not be started: {o.spawn_error}; "
                         "run `lightabaco doctor` to check the backend")
    if o.internal_error:
        return Described(exit_code, None, "setup",
                         f"lightabaco failed while watching the execution ({o.internal_error}); "
                         "the sandbox was stopped - please report this")
    if o.limit_error:
        return Described(None, None, "setup",
                         f"the sandbox's limits could not be put in place ({o.limit_error}), so the "
                         "actor was not started; run `lightabaco doctor` to check the backend")
    detail = o.failure_detail or "no message from the runtime"
    stopped = o.killed or o.timed_out or o.proc_limit or o.memory_exceeded or o.files_exceeded
    if failure == "setup" and not stopped:
        return Described(None, None, "setup",
                         f"the sandbox could not be set up: {detail}; "
                         "run `lightabaco doctor` to see what this host supports")
    if failure == "exec" and not stopped:
        return Described(127, None, "exec",
                         f"the command could not be started: {detail}; check the image's "
                         "Entrypoint/Cmd and that the program exists in the image")
    if stopped and exit_code is None:
        exit_code = 128 + signal_mod.SIGKILL
    sig = exit_code - 128 if exit_code is not None and 128 < exit_code <= 128 + 64 else None
    failure = None
    if o.killed:
        reason = f"force-quit on request (exit status {exit_code})"
    elif o.timed_out:
        reason = f"killed after {limits.wall_timeout_s:g} s wall-clock limit"
    elif o.proc_limit is not None:
        reason = (f"killed: it reached its limit of {o.proc_limit} processes "
                  "(a fork bomb?)")
    elif o.memory_exceeded is not None:
        reason = (f"killed: its processes used {_mib(o.memory_exceeded)} of memory, over the "
                  f"{_mib(limits.memory_bytes or 0)} limit")
        if o.memory_shared >= 1 << 20:
            reason += (f" ({_mib(o.memory_shared)} of it shared memory: SysV segments, memfds, "
                       "files in /tmp and /dev/shm)")
    elif o.files_exceeded is not None:
        reason = (f"killed: it created {o.files_exceeded[0]} files in /tmp and /dev/shm, over the "
                  f"limit of {o.files_exceeded[1]}")
    elif (sig in (signal_mod.SIGKILL, signal_mod.SIGXCPU) and limits.cpu_seconds
          and cpu_ns >= 0.75 * limits.cpu_seconds * 1e9):
        # 0.75, not 1.0: under heavy host load the kernel's RLIMIT_CPU clock and the rusage
        # numbers were seen to differ by ~10%.
        reason = f"killed after using its {limits.cpu_seconds} s cpu-time limit"
    elif sig is not None:
        reason = f"killed by {_signal_name(sig)} (exit status {exit_code})"
    elif exit_code and limits.memory_bytes and any(h in log_tail for h in _OOM_HINTS):
        reason = (f"exited with status {exit_code} after running out of memory "
                  f"(limit {_mib(limits.memory_bytes)} per process)")
    elif exit_code and o.proc_cap and any(h in log_tail for h in _NPROC_HINTS):
        reason = (f"exited with status {exit_code} after a fork failed at its limit of "
                  f"{o.proc_cap} processes")
    else:
        reason = f"exited with status {exit_code}"
    return Described(exit_code, sig, failure, reason)
