"""One running execution, watched by one thread: spawn, deliver, collect, enforce limits, reap.

The monitor thread is also the thread that spawns the sandbox. bwrap's --die-with-parent is a
PR_SET_PDEATHSIG, which the kernel ties to the *thread* that forked, so the spawning thread must
outlive the sandbox; the monitor does by construction.

The loop poll()s on: the pidfd of the spawned runtime (exit), the log pipe, the results socket,
the runtime's status pipe (bwrap --json-status-fd) and a wake pipe (kill requests). Its timeout is the
nearest of the wall-clock deadline, a kill grace deadline and the next watchdog tick, so a short
execution never waits for a tick.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal as signal_mod
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import procstats
from .channels import LogSink, ResultsSocket
from .errors import ExecutionSetupError
from .rlimit_helper import IpcWatch, SpawnedRuntime
from .scratch import ExecDir
from .types import ExecResult, ExecSpec
from .outcome import Outcome, describe

log = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 0.05  # how often a running sandbox's process count and memory are checked
# Per-sandbox task limit when Limits.pids is not set: RLIMIT_NPROC inside the sandbox's user
# namespace (counts threads too) and the watchdog's process-count threshold.
DEFAULT_MAX_PROCS = 1024
# The writable tmpfs mounts (/tmp, /dev/shm). Their bytes count toward the memory limit (tmpfs pages
# are memory, as a memory cgroup would charge them); their sizes stay caps of their own. They cap bytes
# but not files: every empty file costs ~1 KiB
# of unreclaimable kernel memory, counted in no process's RSS, and the kernel's default allows
# millions (one actor made 428,000 in 4 s, 350 MB of slab). The watchdog allows one file per 4 KiB
# of the /tmp size limit, together in both mounts (65,536 for the default 256 MiB).
TMPFS_MOUNTS = ("tmp", "dev/shm")
BYTES_PER_FILE = 4096
KILL_ESCALATE_S = 2.0  # after SIGKILL of sandbox pid 1, kill the runtime itself if still alive
LOG_DRAIN_S = 2.0  # how long to keep reading the log pipe after the runtime exited


@dataclass
class LaunchPlan:
    """How a backend wants its runtime spawned (argv, fds, host user)."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()
    close_after_spawn: list[int] = field(default_factory=list)  # our copies of fds the child keeps
    user: int | None = None  # host uid/gid to run the runtime as (when lightabaco runs as root)
    group: int | None = None
    # Working directory of the runtime: conmon (podman) writes an empty `oom` file into its cwd
    # when the memory cgroup kills the container; keep that in the execution's own dir.
    cwd: str | None = None
    status_fd: int = -1  # read end of the runtime's status pipe (bwrap --json-status-fd), if any
    block_fd: int = -1  # write end of bwrap --block-fd: written once rlimits are applied
    rlimits: list[tuple[int, tuple[int, int]]] = field(default_factory=list)  # prlimit()ed on pid 1
    # How to prlimit() pid 1 when it is not ours to change (root: rlimit_helper.RlimitHelper).
    prlimit: Callable[[int, list[tuple[int, tuple[int, int]]]], None] | None = None
    # Set the limits of pid 1's IPC namespace and watch its SysV shared memory (bwrap: through
    # rlimit_helper); called while pid 1 is still blocked. Raises OSError: the actor then never runs.
    watch_ipc: Callable[[int], IpcWatch] | None = None
    # Put the execution's network mode in place (sandbox/network.py); called while pid 1 is still
    # blocked, returns what to close at the end. Raises OSError: the actor then never runs.
    setup_network: Callable[[int], Any] | None = None
    # Start the runtime somewhere else than by Popen: (argv, env, {target fd: our fd}) -> a
    # SpawnedRuntime. As root, the helper that already runs as the sandbox user (vfork instead of
    # forking the whole server to switch users; rlimit_helper.RlimitHelper.spawn).
    spawn: Callable[[list[str], dict[str, str], dict[int, int]], SpawnedRuntime] | None = None


def ipc_sysctls(memory_bytes: int) -> dict[str, str]:
    """Limits for a sandbox's own IPC namespace (the kernel's defaults there allow terabytes).

    SysV shared memory may not exceed the memory limit in one segment or in total; the segments it
    does hold are counted by the watchdog too. Message queues and semaphores are kernel memory that
    no limit counts: a few small queues (64 x 16 KiB) and a classic System V semaphore budget.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    return {
        "kernel.shmmax": str(memory_bytes),
        "kernel.shmall": str(max(memory_bytes // page, 1)),
        "kernel.shmmni": "256",
        "kernel.msgmni": "64",
        "kernel.msgmnb": "16384",
        "kernel.sem": "250 8000 32 128",
    }


def tmpfs_files(pid: int) -> int:
    """Files (inodes) in use in the sandbox's writable tmpfs mounts, seen through its pid 1's root.

    0 when they cannot be looked at (the process is gone, or /proc refuses): the check is a
    safeguard on top of the size limits, and must never fail an execution by itself.
    """
    return procstats.tmpfs_usage(pid, TMPFS_MOUNTS)[1]


class MonitoredExecution:
    """Base of the backends' Execution objects. Subclasses interpret their runtime's status."""

    def __init__(self, spec: ExecSpec, exec_dir: ExecDir, plan: LaunchPlan, logs: LogSink,
                 results: ResultsSocket, max_procs: int) -> None:
        self.id = spec.execution_id
        self.spec = spec
        self._exec_dir = exec_dir
        self._plan = plan
        self._logs = logs
        self._results = results
        self._max_procs = max_procs
        self._done = threading.Event()
        self._result: ExecResult | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._kill_requested: float | None = None  # grace seconds of a pending kill() call
        self.proc: subprocess.Popen[bytes] | SpawnedRuntime | None = None
        self._runtime_pidfd = -1  # pidfd of the runtime process (exit, and kills without pid reuse)
        self.child_pid: int | None = None  # host pid of the sandbox's pid 1, once known
        self.outcome = Outcome(proc_cap=max_procs)
        self._snapshot: procstats.TreeSnapshot | None = None
        # Max VmHWM of the sandbox's processes, sampled by the watchdog. Preferred over wait4's
        # ru_maxrss, which also counts the runtime's pre-exec image (the forked or vforked
        # Python: 10-30 MB) and so says nothing about a small actor.
        self._peak_rss_kb = 0
        self._ipc: IpcWatch | None = None
        self._net: Any = None  # network.Attachment of the execution's network mode
        self._child_pidfd = -1
        self._hard_killed_at: float | None = None
        self._term_deadline: float | None = None
        self._thread = threading.Thread(target=self._main, name=f"sandbox-{self.id}", daemon=True)

    # -- public API (types.Execution) ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def run_here(self) -> ExecResult:
        """Monitor from the calling thread until the end (for a blocking run())."""
        try:
            self._main()
        except BaseException:  # KeyboardInterrupt/SystemExit in the caller's thread
            if not self._done.is_set():
                self._kill_quietly()
                self._cleanup()
                self._done.set()
            raise
        assert self._result is not None
        return self._result

    def wait(self, timeout: float | None = None) -> ExecResult | None:
        self._done.wait(timeout)
        return self._result

    def poll(self) -> ExecResult | None:
        return self._result if self._done.is_set() else None

    def kill(self, grace_s: float = 0.0) -> None:
        with self._lock:  # the same lock guards closing the wake pipe in _cleanup()
            if self._done.is_set() or self._wake_w < 0:
                return
            self._kill_requested = max(0.0, grace_s)
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # already awake

    # -- hooks for subclasses ------------------------------------------------------------------

    # False when the spawned process is only a client of the sandbox (podman: conmon is the
    # container's parent), so its rusage says nothing about the actor.
    rusage_is_sandbox = True
    # After SIGKILL of the sandbox, how long the runtime may take to notice before it is killed too.
    kill_escalate_s = KILL_ESCALATE_S

    def _extra_cpu_ns(self) -> tuple[int, str] | None:
        """cpu from another source (a cgroup), with its stats_source name."""
        return None

    def _on_status(self, data: bytes) -> None:
        """Runtime status bytes arrived (bwrap JSON). May set self.child_pid."""

    def _kill_sandbox(self) -> None:
        """SIGKILL the sandbox. Default: its pid 1 when known (the runtime then reaps it and keeps
        its rusage), else the runtime process itself."""
        if self._child_pidfd >= 0:
            # Through a pidfd: pid 1 may already be gone and its number reused by then.
            try:
                signal_mod.pidfd_send_signal(self._child_pidfd, signal_mod.SIGKILL)
            except ProcessLookupError:
                pass
            return
        if self.child_pid:
            _signal(self.child_pid, signal_mod.SIGKILL)
        else:
            self._signal_runtime(signal_mod.SIGKILL)

    def _signal_runtime(self, sig: int) -> None:
        """Signal the runtime process itself, through its pidfd once we have one (a spawned runtime
        is reaped by the helper, so its pid number may be reused afterwards)."""
        if self._runtime_pidfd >= 0:
            try:
                signal_mod.pidfd_send_signal(self._runtime_pidfd, sig)
            except ProcessLookupError:
                pass
        elif isinstance(self.proc, subprocess.Popen):
            _signal(self.proc.pid, sig)

    def _exit_status(self, returncode: int) -> tuple[int | None, str | None]:
        """(actor exit code, failure kind or None) from what the runtime reported."""
        return returncode, None

    # -- the monitor thread ----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except Exception as exc:  # never leave a waiter hanging
            log.exception("execution %s monitor failed", self.id, extra={"action": "monitor"})
            self.outcome.internal_error = f"{type(exc).__name__}: {exc}"
            self._kill_quietly()
            self._finish(None, None, {}, 0.0)

    def _kill_quietly(self) -> None:
        try:
            if self.proc and self.proc.returncode is None:
                self._kill_sandbox()
                self._signal_runtime(signal_mod.SIGKILL)
                self._reap()
        except Exception:
            log.exception("cleanup after monitor failure", extra={"action": "monitor"})

    def _run(self) -> None:
        plan = self._plan
        self._start_wall = time.time()
        self._start_mono = time.monotonic()
        try:
            if plan.spawn is not None:
                fds = {fd: fd for fd in plan.pass_fds}
                fds[1] = fds[2] = self._logs.write_fd
                spawned = plan.spawn(plan.argv, plan.env, fds)
                self.proc, self._runtime_pidfd, spawned.pidfd = spawned, spawned.pidfd, -1
            else:
                self.proc = subprocess.Popen(
                    plan.argv, env=plan.env, stdin=subprocess.DEVNULL,
                    stdout=self._logs.write_fd, stderr=self._logs.write_fd,
                    pass_fds=plan.pass_fds, close_fds=True, cwd=plan.cwd,
                    user=plan.user, group=plan.group,
                    extra_groups=[] if plan.user is not None else None,
                )
                self._runtime_pidfd = os.pidfd_open(self.proc.pid)
        except (OSError, ExecutionSetupError) as exc:
            why = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
            self.outcome.spawn_error = f"cannot start {plan.argv[0]}: {why}"
            self._close_plan_fds()
            self._finish(None, None, {}, 0.0)
            return
        self._close_plan_fds()
        self._logs.close_write_end()
        self._loop(self._runtime_pidfd)
        rusage, io, wait_status = self._reap()
        self._drain_after_exit()
        self._finish(wait_status, rusage, io, time.monotonic() - self._start_mono)

    def _close_plan_fds(self) -> None:
        for fd in self._plan.close_after_spawn:
            try:
                os.close(fd)
            except OSError:
                pass
        self._plan.close_after_spawn = []

    def _loop(self, pidfd: int) -> None:
        limits = self.spec.limits
        deadline = (self._start_mono + limits.wall_timeout_s) if limits.wall_timeout_s else None
        next_tick = self._start_mono + WATCHDOG_INTERVAL_S
        log_open = True
        while True:
            fds = [pidfd, self._results.fileno(), self._wake_r]
            if log_open:
                fds.append(self._logs.fileno())
            if self._plan.status_fd >= 0 and self.child_pid is None:
                # Only until pid 1 is known: bwrap writes its status in many small pieces, and
                # every extra wake-up costs a scheduling delay on a busy host. The rest (the exit
                # code) waits in the pipe until the runtime has exited.
                fds.append(self._plan.status_fd)
            now = time.monotonic()
            wakeups = [next_tick]
            if deadline is not None and not self.outcome.ending:
                wakeups.append(deadline)
            if self._term_deadline is not None:
                wakeups.append(self._term_deadline)
            if self._hard_killed_at is not None:
                wakeups.append(self._hard_killed_at + self.kill_escalate_s)
            ready = _wait_readable(fds, max(0.0, min(wakeups) - now))
            if self._plan.status_fd in ready:
                self._read_status()
            if self._results.fileno() in ready:
                self._results.drain()
            if log_open and self._logs.fileno() in ready:
                log_open = self._logs.pump()
            if self._wake_r in ready:
                self._handle_wake()
            if pidfd in ready:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline and not self.outcome.ending:
                self.outcome.timed_out = True
                self._terminate(0.0)
            if self._term_deadline is not None and now >= self._term_deadline:
                self._term_deadline = None
                self._hard_kill()
            if self._hard_killed_at is not None and now >= self._hard_killed_at + self.kill_escalate_s:
                self._signal_runtime(signal_mod.SIGKILL)
                self._hard_killed_at = now  # re-arm rather than spin if it hangs in the kernel
            if now >= next_tick:
                next_tick = now + WATCHDOG_INTERVAL_S
                if not self.outcome.ending:
                    self._watchdog()

    def _read_status(self) -> None:
        try:
            data = os.read(self._plan.status_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            os.close(self._plan.status_fd)
            self._plan.status_fd = -1
            return
        had_child = self.child_pid is not None
        self._on_status(data)
        if not had_child and self.child_pid is not None:
            self._release_child()

    def _release_child(self) -> None:
        """pid 1 is known and blocked before exec: apply rlimits to it, then let it run."""
        try:
            self._child_pidfd = os.pidfd_open(self.child_pid)  # type: ignore[arg-type]
        except ProcessLookupError:
            pass
        try:
            if self._plan.prlimit is not None and self._plan.rlimits:
                self._plan.prlimit(self.child_pid, self._plan.rlimits)  # type: ignore[arg-type]
            else:
                for resource_id, value in self._plan.rlimits:
                    _prlimit(self.child_pid, resource_id, value)  # type: ignore[arg-type]
            if self._plan.watch_ipc is not None:
                try:
                    self._ipc = self._plan.watch_ipc(self.child_pid)  # type: ignore[arg-type]
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ESRCH):
                        raise ProcessLookupError from exc  # bwrap failed: its exit says why
                    # Fail closed: without them SysV memory would be neither capped nor counted.
                    self.outcome.limit_error = f"IPC namespace limits: {exc}"
                    self._terminate(0.0)
                    return
            if self._plan.setup_network is not None:
                try:
                    self._net = self._plan.setup_network(self.child_pid)  # type: ignore[arg-type]
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ESRCH):
                        raise ProcessLookupError from exc
                    # Fail closed: the actor never runs with a network other than its mode's.
                    self.outcome.spawn_error = f"network mode {self.spec.network!r}: {exc.strerror or exc}"
                    self._terminate(0.0)
                    return
            if self._plan.block_fd >= 0:
                os.write(self._plan.block_fd, b"g")
        except (ProcessLookupError, BrokenPipeError):
            pass  # bwrap already failed and exited: its exit is reported through the pidfd
        finally:
            if self._plan.block_fd >= 0:
                os.close(self._plan.block_fd)
                self._plan.block_fd = -1
        if self._kill_requested is not None or self.outcome.ending:
            self._hard_kill()

    def _handle_wake(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        with self._lock:
            grace, self._kill_requested = self._kill_requested, None
        if grace is not None and not self.outcome.ending:
            self.outcome.killed = True
            self._terminate(grace)

    def _watchdog(self) -> None:
        if self.child_pid is None:
            return
        limits = self.spec.limits
        pids = procstats.tree_pids(self.child_pid, limit=self._max_procs)
        if len(pids) >= self._max_procs:  # at the limit: RLIMIT_NPROC keeps it from going over
            self._peak_rss_kb = max(self._peak_rss_kb, procstats.peak_rss_kb(pids[:64]))
            self.outcome.proc_limit = self._max_procs
            self._terminate(0.0)
            return
        if limits.memory_bytes:
            # RLIMIT_DATA stops one process; this catches many processes that together use too
            # much, and the shared memory that is in no process's RSS (procstats.memory_usage).
            sysv = self._ipc.sysv_bytes() if self._ipc is not None else None
            usage = procstats.memory_usage(pids, self.child_pid, TMPFS_MOUNTS, sysv)
            self._peak_rss_kb = max(self._peak_rss_kb, usage.peak_rss_kb)
            if usage.total > limits.memory_bytes:
                self.outcome.memory_exceeded = usage.total
                self.outcome.memory_shared = usage.shared
                self._terminate(0.0)
                return
            files = usage.tmpfs_files
        else:
            self._peak_rss_kb = max(self._peak_rss_kb, procstats.peak_rss_kb(pids[:64]))
            files = tmpfs_files(self.child_pid)
        if limits.tmpfs_bytes:
            max_files = max(int(limits.tmpfs_bytes) // BYTES_PER_FILE, 1024)
            if files > max_files:
                self.outcome.files_exceeded = (files, max_files)
                self._terminate(0.0)

    def _terminate(self, grace: float) -> None:
        self.outcome.ending = True
        if grace > 0 and self.child_pid is not None:
            for pid in procstats.tree_pids(self.child_pid):
                _signal(pid, signal_mod.SIGTERM)
            self._term_deadline = time.monotonic() + grace
            return
        self._hard_kill()

    def _hard_kill(self) -> None:
        if self._hard_killed_at is not None:
            return
        if self.child_pid is not None:
            # Keep the cpu of processes the pid-namespace teardown will reap behind our back.
            self._snapshot = procstats.snapshot(self.child_pid)
            self._peak_rss_kb = max(self._peak_rss_kb, procstats.peak_rss_kb(self._snapshot.pids[:64]))
        self._kill_sandbox()
        self._hard_killed_at = time.monotonic()

    def _reap(self) -> tuple[object, dict[str, int], int]:
        assert self.proc is not None
        if isinstance(self.proc, SpawnedRuntime):
            wait_status, rusage, io = self.proc.reap()
        else:
            wait_status, rusage, io = procstats.reap(self.proc.pid)
        # Tell Popen the child is gone, so its own cleanup never waits on a recycled pid.
        self.proc.returncode = os.waitstatus_to_exitcode(wait_status)
        return rusage, io, wait_status

    def _drain_after_exit(self) -> None:
        end = time.monotonic() + LOG_DRAIN_S
        while self._logs.read_fd >= 0:
            ready = _wait_readable([self._logs.fileno()], max(0.0, end - time.monotonic()))
            if not ready or not self._logs.pump():
                break
        self._results.drain(max_items=None)  # the runtime is gone: nothing can refill it now
        while self._plan.status_fd >= 0:
            if not _wait_readable([self._plan.status_fd], 0.0):
                break
            self._read_status()

    def _finish(self, wait_status: int | None, rusage: object, io: dict[str, int], wall: float) -> None:
        end = time.time()
        cpu_ns = 0
        max_rss = 0
        source = "none"
        if rusage is not None and self.rusage_is_sandbox:
            cpu_ns = int((rusage.ru_utime + rusage.ru_stime) * 1e9)  # type: ignore[attr-defined]
            max_rss = int(rusage.ru_maxrss)  # type: ignore[attr-defined]
            source = "wait4"
        else:
            io = {}
        extra = self._extra_cpu_ns()
        if extra is not None and extra[0] > cpu_ns:
            cpu_ns, source = extra
        io = {k: int(io.get(k, 0)) for k in procstats.IO_KEYS}
        if self._peak_rss_kb:
            max_rss = self._peak_rss_kb
        if self._snapshot is not None:
            cpu_ns = max(cpu_ns, self._snapshot.cpu_ns)
            io = {k: max(io[k], self._snapshot.io[k]) for k in procstats.IO_KEYS}
            source = "snapshot" if source == "none" else source + "+snapshot"
        exit_code: int | None = None
        failure: str | None = "setup"
        if self.proc is not None and self.proc.returncode is not None:
            if self.proc.returncode < 0:  # the runtime itself was killed (escalation): Docker style
                exit_code, failure = 128 - self.proc.returncode, None
            else:
                exit_code, failure = self._exit_status(self.proc.returncode)
        result = describe(
            self.spec, self.outcome, exit_code=exit_code, failure=failure, cpu_ns=cpu_ns,
            log_tail=self._logs.tail(), runtime=self._plan.argv[0] if self._plan.argv else "",
        )
        self._result = ExecResult(
            execution_id=self.id, exit_code=result.exit_code, signal=result.signal,
            timed_out=self.outcome.timed_out and not self.outcome.killed, killed=self.outcome.killed,
            failure=result.failure,  # type: ignore[arg-type]
            reason=result.reason, log_path=self._logs.path,
            log_truncated=self._logs.truncated, results=list(self._results.results),
            results_rejected=self._results.rejected, cpu_ns=cpu_ns, io=io, max_rss_kb=max_rss,
            wall_s=wall, start_time=getattr(self, "_start_wall", end), end_time=end,
            stats_source=source,
        )
        self._cleanup()
        self._done.set()

    def _cleanup(self) -> None:
        for closer in (self._logs.close, self._results.close, self._close_plan_fds):
            try:
                closer()
            except OSError:
                pass
        if self._ipc is not None:
            self._ipc.close()
            self._ipc = None
        if self._net is not None:
            self._net.close()
            self._net = None
        for fd in (self._plan.status_fd, self._plan.block_fd, self._child_pidfd, self._runtime_pidfd):
            if fd >= 0:
                os.close(fd)
        self._plan.status_fd = self._plan.block_fd = self._child_pidfd = self._runtime_pidfd = -1
        if isinstance(self.proc, SpawnedRuntime):
            self.proc.close()
        with self._lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
        try:
            self._exec_dir.remove()
        except OSError:
            log.exception("cannot remove %s", self._exec_dir.path, extra={"action": "cleanup"})


def _wait_readable(fds: list[int], timeout_s: float) -> list[int]:
    """poll(), not select(): select() cannot watch descriptors above 1023, and a busy server
    process easily has that many open."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(timeout_s * 1000.0)]


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _prlimit(pid: int, resource_id: int, value: tuple[int, int]) -> None:
    import resource

    resource.prlimit(pid, resource_id, value)
