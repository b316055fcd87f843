"""The bubblewrap backend: one unprivileged bwrap sandbox per execution (sandbox-notes §5, §10.4).

Every option, including the actor's environment (--clearenv/--setenv), reaches bwrap through a
memfd (`--args`); only the image's command stays on the visible argv. So the message environment
never shows in `ps`, and it never becomes bwrap's own environment (an `LD_PRELOAD` in a message
would otherwise be loaded into bwrap on the host).

rlimits: bwrap starts with --block-fd, reports the host pid of sandbox pid 1 on --json-status-fd,
and waits; the monitor prlimit()s that pid and releases it. That applies limits before the actor's
first instruction without preexec_fn (unsafe with threads, forces fork) or an extra `prlimit` exec.
As root, the prlimit() goes through a helper process running as the sandbox user
(rlimit_helper.py), because root may lack CAP_SYS_RESOURCE over another user's processes.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import threading
import time
import weakref
from pathlib import Path

from . import network
from . import probe as probe_mod
from . import seccomp
from .channels import LogSink, ResultsSocket, write_binary_data
from .errors import BackendUnavailable, ExecutionSetupError
from .execution import DEFAULT_MAX_PROCS, LaunchPlan, MonitoredExecution, ipc_sysctls
from .rlimit_helper import RlimitHelper
from .scratch import ExecDir, Scratch, new_execution_id
from .types import ExecResult, ExecSpec, ProbeReport
from .users import HostUser, check_reachable_by, sandbox_host_user, sandbox_identity

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BINARY_DATA = "/_abaco_binary_data"
RESULTS_SOCK = "/_abaco_results.sock"
# Mount points that must already exist in a read-only image root (the image store prepares them).
_RO_ROOT_NEEDS = ("proc", "dev", "tmp", BINARY_DATA[1:], RESULTS_SOCK[1:])
# Size of the sandbox's /dev/shm (Docker's and podman's default --shm-size).
DEV_SHM_BYTES = 64 << 20
# Binary messages up to this size reach the sandbox from memory; larger ones through a file.
INLINE_BINARY_MAX = 64 << 20


def nproc_limit(max_procs: int) -> int:
    """RLIMIT_NPROC for a sandbox whose watchdog ends it at `max_procs` processes: some slack above,
    so that a fork bomb pressing against the kernel limit (its count dips while children exit)
    still reaches the watchdog's threshold (with 8 tasks of slack it hovered at 1020 of 1024)."""
    return max_procs + max(16, max_procs // 8)


def build_env(spec: ExecSpec, hostname: str, home: str) -> dict[str, str]:
    """Image Env, then the message environment on top (None = unset), then defaults if absent."""
    env: dict[str, str] = {}
    for item in spec.image.config.env:
        key, sep, value = item.partition("=")
        if key and sep:
            env[key] = value
    for key, layered in spec.env.items():
        if layered is None:
            env.pop(key, None)
        else:
            env[key] = str(layered)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", home)
    env.setdefault("HOSTNAME", hostname)
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ExecutionSetupError(
                f"environment variable {key[:40]!r} cannot be passed to a process (names may not be "
                "empty or contain '=' or NUL, values may not contain NUL); rename or drop it"
            )
    return env


def build_command(spec: ExecSpec) -> list[str]:
    """Docker semantics: Entrypoint + (the override, else the image Cmd)."""
    cfg = spec.image.config
    command = list(cfg.entrypoint) + list(spec.cmd if spec.cmd is not None else cfg.cmd)
    if not command:
        raise ExecutionSetupError(
            f"image {spec.image.reference or spec.image.config_digest} has no Entrypoint or Cmd; "
            "give the actor a command or rebuild the image with a CMD"
        )
    return command


def _rlimits(spec: ExecSpec) -> list[tuple[int, tuple[int, int]]]:
    lim = spec.limits
    out: list[tuple[int, tuple[int, int]]] = [(resource.RLIMIT_CORE, (0, 0))]
    if lim.cpu_seconds:
        # soft == hard: the kernel SIGKILLs at the limit. A lower soft limit would only send
        # SIGXCPU, which the sandbox's pid 1 ignores (sandbox-notes §6.2), and let it run on.
        out.append((resource.RLIMIT_CPU, (int(lim.cpu_seconds), int(lim.cpu_seconds))))
    if lim.memory_bytes:
        # RLIMIT_DATA, not RLIMIT_AS: it counts what a process actually allocates, and does not
        # break runtimes that reserve large virtual areas (JVM, Go).
        out.append((resource.RLIMIT_DATA, (int(lim.memory_bytes), int(lim.memory_bytes))))
    if lim.max_file_bytes:
        out.append((resource.RLIMIT_FSIZE, (int(lim.max_file_bytes), int(lim.max_file_bytes))))
    if lim.nofile:
        out.append((resource.RLIMIT_NOFILE, (int(lim.nofile), int(lim.nofile))))
    return out


_CHILD_PID_RE = re.compile(rb'"child-pid"\s*:\s*(\d+)')


def parse_status(buf: bytes) -> tuple[list[dict], bytes]:
    """Split bwrap's --json-status-fd stream into complete JSON documents and the unparsed rest
    (bwrap writes several documents, and one read may end in the middle of one)."""
    decoder = json.JSONDecoder()
    text = buf.decode("utf-8", "replace")
    docs: list[dict] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs, b""
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return docs, text[pos:].encode()
        if isinstance(doc, dict):
            docs.append(doc)


class BwrapExecution(MonitoredExecution):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._status_buf = b""
        self.status: dict[str, object] = {}

    def _on_status(self, data: bytes) -> None:
        docs, self._status_buf = parse_status(self._status_buf + data)
        for doc in docs:
            self.status.update(doc)
        if self.child_pid is None:
            if "child-pid" in self.status:
                self.child_pid = int(str(self.status["child-pid"]))
            else:
                # The first piece bwrap writes is `{ "child-pid": N` (one atomic write): use it at
                # once instead of waiting for the rest of the document.
                match = _CHILD_PID_RE.search(self._status_buf)
                if match:
                    self.child_pid = int(match.group(1))

    def _exit_status(self, returncode: int) -> tuple[int | None, str | None]:
        if "exit-code" in self.status:
            return int(str(self.status["exit-code"])), None
        messages = [line for line in self._logs.tail().decode("utf-8", "replace").splitlines()
                    if line.startswith("bwrap: ")]
        self.outcome.failure_detail = messages[-1] if messages else f"bwrap exited with {returncode}"
        if self.child_pid is not None and "execvp" in self.outcome.failure_detail:
            return 127, "exec"
        return None, "setup"


class BwrapBackend:
    """`get_backend("bwrap", scratch=...)`. Thread-safe: all per-execution state is in the Execution."""

    name = "bwrap"

    def __init__(self, scratch: Path, bwrap: str = "bwrap", max_procs: int = DEFAULT_MAX_PROCS,
                 seccomp: bool = True, spawn_from_helper: bool = True) -> None:
        self.bwrap = shutil.which(bwrap) or bwrap
        self.seccomp = seccomp  # install the deny-list filter (lightabaco/sandbox/seccomp.py)
        self.scratch = Scratch(Path(scratch), traversable=os.geteuid() == 0)
        self.max_procs = max_procs
        # As root: start bwrap from the helper, which runs as the sandbox user already, by vfork
        # (helper_server.py); False forks this process to switch users (Popen(user=...)).
        self.spawn_from_helper = spawn_from_helper
        self._probe: ProbeReport | None = None
        self._probe_lock = threading.Lock()
        self.scratch.ensure()
        self.stale_collected = self.scratch.collect_stale()
        # Forked now, while this process is young; closed when the backend goes away. As root it
        # runs as the sandbox user and also applies rlimits; always it sets and watches each
        # sandbox's IPC namespace (rlimit_helper.py).
        self._helper = RlimitHelper(sandbox_host_user())
        weakref.finalize(self, self._helper.close)

    def probe(self) -> ProbeReport:
        with self._probe_lock:
            if self._probe is None:
                self._probe = probe_mod.probe_bwrap(self.bwrap)
            return self._probe

    def require_usable(self) -> ProbeReport:
        report = self.probe()
        if not report.usable:
            raise BackendUnavailable("bwrap cannot run sandboxes here: " + "; ".join(report.reasons))
        return report

    def run(self, spec: ExecSpec) -> ExecResult:
        """Start and wait, monitoring from the calling thread (one thread hand-off less than
        start().wait(); the caller's thread is blocked here, so it outlives the sandbox)."""
        return self._prepare(spec).run_here()

    def start(self, spec: ExecSpec) -> BwrapExecution:
        """Prepare the host side (raises ExecutionSetupError) and start the sandbox (non-blocking)."""
        ex = self._prepare(spec)
        ex.start()
        return ex

    def _prepare(self, spec: ExecSpec) -> BwrapExecution:
        report = self.require_usable()
        if spec.network not in network.MODES:
            raise ExecutionSetupError(f"unknown network mode {spec.network!r}; use one of: "
                                      + ", ".join(network.MODES))
        if spec.network == "outbound" and network.pasta_path() is None:
            raise ExecutionSetupError("network mode 'outbound' needs pasta: install Debian's `passt` "
                                      "package (or give the actor network 'api' or 'none')")
        if not spec.execution_id:
            spec.execution_id = new_execution_id()
        host_user = sandbox_host_user()
        identity = sandbox_identity(spec)
        command = build_command(spec)
        hostname = spec.execution_id[:63]
        env = build_env(spec, hostname, identity.home)
        rootfs = Path(spec.image.rootfs)
        large_message = len(spec.binary_message or b"") > INLINE_BINARY_MAX
        if host_user is not None:
            check_reachable_by(rootfs, host_user)
            if large_message:
                check_reachable_by(self.scratch.root, host_user)
        max_procs = int(spec.limits.pids or self.max_procs)
        exec_dir = self.scratch.create(spec.execution_id)
        owner = (host_user.uid, host_user.gid) if host_user else None
        fds: list[int] = []
        logs = results = None
        try:
            if host_user is not None:
                check_reachable_by(exec_dir.path, host_user)
            if large_message:
                write_binary_data(exec_dir.binary_path, spec.binary_message, owner)
            results = ResultsSocket(exec_dir.path / "results.sock", spec.on_result, 0o600, owner)
            logs = LogSink(spec.log_path or self.scratch.default_log_path(spec.execution_id),
                           spec.limits.log_bytes)
            if owner is not None:
                # The sandbox user must own its stdout pipe, else reopening it (`echo x >
                # /dev/stderr`, `tee /dev/stdout`: /proc/self/fd/N) is refused with EACCES.
                os.fchown(logs.write_fd, *owner)
            plan = self._plan(spec, report, identity, env, command, hostname, rootfs,
                              exec_dir, host_user, fds, max_procs)
        except BaseException:
            for fd in fds:
                os.close(fd)
            for ch in (logs, results):
                if ch is not None:
                    ch.close()
            exec_dir.remove()
            raise
        ex = BwrapExecution(spec, exec_dir, plan, logs, results, max_procs)
        return ex

    def _plan(self, spec: ExecSpec, report: ProbeReport, identity, env: dict[str, str],  # type: ignore[no-untyped-def]
              command: list[str], hostname: str, rootfs: Path, exec_dir: ExecDir,
              host_user: HostUser | None, fds: list[int], max_procs: int) -> LaunchPlan:
        def source(path: Path | str) -> str:
            # bwrap 0.8 turns even --ro-bind-fd sources back into paths, so plain paths it is;
            # checking here gives a clear error instead of bwrap's "Can't find source path".
            if not os.path.exists(path):
                raise ExecutionSetupError(f"cannot bind {path} into the sandbox: it does not exist")
            return os.fspath(path)

        args: list[str] = ["--unshare-all", "--unshare-user"]
        if spec.network == "host":
            args.append("--share-net")  # must follow --unshare-all
        args += ["--die-with-parent", "--new-session", "--as-pid-1"]
        if report.features.get("disable_userns"):
            args.append("--disable-userns")
        args += ["--cap-drop", "ALL", "--uid", str(identity.uid), "--gid", str(identity.gid),
                 "--hostname", hostname]
        missing = [m for m in _RO_ROOT_NEEDS if not os.path.lexists(rootfs / m)]
        workdir = spec.image.config.working_dir or "/"
        extra_dirs = [workdir] + [dest for _, dest, _ in spec.mounts]
        missing += [d for d in extra_dirs if not os.path.lexists(rootfs / d.lstrip("/"))]
        tmpfs_root = bool(missing)
        if not tmpfs_root:
            # Fast path: the image root itself, read-only, mount points prepared by the store.
            args += ["--ro-bind", source(rootfs), "/"]
        else:
            # The image lacks some mount point: build / on a tmpfs from the image's top-level
            # entries (about 2 ms more, sandbox-notes §5.1), create what is missing, then make / ro.
            args += ["--tmpfs", "/"]
            for entry in sorted(os.scandir(rootfs), key=lambda e: e.name):
                if entry.is_symlink():
                    args += ["--symlink", os.readlink(entry.path), "/" + entry.name]
                else:
                    args += ["--ro-bind", source(entry.path), "/" + entry.name]
            for d in extra_dirs:
                if not os.path.lexists(rootfs / d.lstrip("/")):
                    args += ["--dir", d]
        args += ["--proc", "/proc"]
        # bwrap leaves /proc/sys writable (it only covers it when access(W_OK) allows, and the
        # directory is 0555). The actor's euid is the root of the user namespace that owns its IPC
        # namespace, so it could raise kernel.shmmax & co. back (measured). Bound read-only: sysctl
        # files show the reader's namespaces whichever proc mount they are reached through.
        args += ["--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev"]
        # bwrap's /dev is a tmpfs without a size limit, owned by the sandbox user: an actor could
        # fill half the host's RAM there (tmpfs pages count in no process's RSS, so neither the
        # rlimits nor the memory watchdog see them). Give /dev/shm a Docker-sized tmpfs of its own
        # and make the rest of /dev read-only (device nodes stay usable: they are separate mounts).
        args += ["--size", str(DEV_SHM_BYTES), "--perms", "1777", "--tmpfs", "/dev/shm",
                 "--remount-ro", "/dev"]
        if spec.limits.tmpfs_bytes:
            args += ["--size", str(int(spec.limits.tmpfs_bytes))]
        args += ["--perms", "1777", "--tmpfs", "/tmp"]
        # The binary message is a regular read-only file in the sandbox, never a FIFO: see
        # channels.write_binary_data. Up to INLINE_BINARY_MAX it is handed over in memory (a memfd
        # that bwrap copies into the sandbox's own tmpfs): no host file, no inode, no disk write.
        message = spec.binary_message or b""
        if len(message) <= INLINE_BINARY_MAX:
            data_fd = os.memfd_create("abaco-binary-data", os.MFD_CLOEXEC)
            fds.append(data_fd)
            view = memoryview(message)
            while view:
                view = view[os.write(data_fd, view):]
            os.lseek(data_fd, 0, os.SEEK_SET)
            args += ["--perms", "0444", "--ro-bind-data", str(data_fd), BINARY_DATA]
        else:
            args += ["--ro-bind", os.fspath(exec_dir.binary_path), BINARY_DATA]
        args += ["--ro-bind", os.fspath(exec_dir.path / "results.sock"), RESULTS_SOCK]
        if spec.network in ("host", "outbound") and os.path.isfile("/etc/resolv.conf") and \
                os.path.isfile(rootfs / "etc" / "resolv.conf") and not tmpfs_root:
            # With the host's network the actor also needs the host's name servers.
            args += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
        for host, dest, read_only in spec.mounts:
            args += ["--ro-bind" if read_only else "--bind", source(host), dest]
        if tmpfs_root:
            args += ["--remount-ro", "/"]
        if self.seccomp and seccomp.supported():
            filter_fd = seccomp.program_fd()
            fds.append(filter_fd)
            args += ["--seccomp", str(filter_fd)]
        args.append("--clearenv")
        for key, value in env.items():
            args += ["--setenv", key, value]
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        block_r, block_w = os.pipe2(os.O_CLOEXEC)
        fds += [status_w, block_r]
        args += ["--json-status-fd", str(status_w), "--block-fd", str(block_r),
                 "--chdir", workdir]
        memfd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
        fds.append(memfd)
        os.write(memfd, b"".join(os.fsencode(a) + b"\0" for a in args))
        os.lseek(memfd, 0, os.SEEK_SET)

        rlimits = _rlimits(spec)
        # A real per-sandbox process limit: RLIMIT_NPROC set on pid 1 *after* it entered its new
        # user namespace is checked against the tasks of that namespace only (the kernel's
        # per-userns ucounts), not against all of the host uid's processes (measured: with 80 host
        # processes of the same uid, a limit of 50 gave the sandbox exactly 50 tasks). The notes'
        # "useless" verdict holds for RLIMIT_NPROC set before bwrap, as prlimit(1) would.
        nproc = nproc_limit(max_procs)
        rlimits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
        # bwrap 0.8 takes only options from --args; the command must stay on the real argv.
        argv = [self.bwrap, "--args", str(memfd), "--", *command]
        return LaunchPlan(
            argv=argv, env={"PATH": DEFAULT_PATH}, pass_fds=tuple(fds),
            close_after_spawn=list(fds), user=host_user.uid if host_user else None,
            group=host_user.gid if host_user else None, status_fd=status_r, block_fd=block_w,
            rlimits=rlimits, prlimit=self._helper.prlimit if host_user is not None else None,
            watch_ipc=self._ipc_watcher(spec),
            setup_network=self._network_setup(spec, host_user),
            spawn=self._helper.spawn if host_user is not None and self.spawn_from_helper else None,
        )

    def _network_setup(self, spec: ExecSpec, host_user: HostUser | None):  # type: ignore[no-untyped-def]
        """The execution's network mode beyond bwrap's own --unshare-net / --share-net: the API door
        and, for `outbound`, prohibit routes and pasta (sandbox/network.py)."""
        mode = spec.network
        if mode in ("none", "host"):
            return None
        relay = spec.api_relay
        prohibit = network.prohibited_networks(mode)
        user = (host_user.uid, host_user.gid) if host_user is not None else None

        def setup(pid: int) -> network.Attachment:
            started = time.monotonic()
            att = network.Attachment()
            try:
                listener = self._helper.net_door(pid, relay.port if relay else 0, prohibit)
                if listener is not None and relay is not None:
                    att.relay = network.RelayServer(listener, relay, name=f"api-relay-{spec.execution_id}")
                if mode == "outbound":
                    att.pasta = network.start_pasta(pid, user)
            except BaseException:
                att.close()
                raise
            att.setup_ms = (time.monotonic() - started) * 1000
            return att
        return setup

    def _ipc_watcher(self, spec: ExecSpec):  # type: ignore[no-untyped-def]
        """Cap and count the sandbox's SysV shared memory when its memory is limited."""
        if not spec.limits.memory_bytes:
            return None
        sysctls = ipc_sysctls(int(spec.limits.memory_bytes))
        return lambda pid: self._helper.watch_ipc(pid, sysctls)
