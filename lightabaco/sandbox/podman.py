"""The podman backend (optional): the same execution contract through `podman run --rootfs DIR:O`.

About 30x slower to start than bwrap (sandbox-notes §7), but usable where bwrap is not (no
unprivileged user namespaces, but podman's setuid helpers or root), and rootful podman gets real
cgroup limits (pids, memory) even on cgroup v1 hosts.

What this module works around (sandbox-notes §2, §10.6):
* podman writes state outside --root (~/.config, /etc/containers/networks, /var/lib/containers...):
  it gets a private HOME, XDG dirs, containers.conf and storage.conf under <scratch>/podman.
* crun fails on hybrid cgroup hosts ("cgroups in hybrid mode not supported"): the probe tries crun
  and falls back to runc.
* rootful podman's default rlimits fail with EPERM where root lacks CAP_SYS_RESOURCE: explicit
  --ulimit nofile/nproc values within the hard limits.
* `--rootfs DIR` writes into DIR; `--rootfs DIR:O` (overlay) shares the image store untouched.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import threading
from pathlib import Path

from .bwrap import BINARY_DATA, DEV_SHM_BYTES, RESULTS_SOCK, build_command, build_env
from .channels import LogSink, ResultsSocket, write_binary_data
from .errors import BackendUnavailable, ExecutionSetupError
from .execution import DEFAULT_MAX_PROCS, LaunchPlan, MonitoredExecution, ipc_sysctls
from .probe import subuid_problem
from .scratch import Scratch, new_execution_id
from .types import ExecResult, ExecSpec, ProbeReport
from .users import sandbox_identity

CPUACCT_V1 = Path("/sys/fs/cgroup/cpuacct/libpod_parent")
ROOTFUL_NPROC = 4096
RUNC_MIN_DATA = 128 << 20  # RLIMIT_DATA below which runc cannot start a container (measured)  # podman/conmon run with nproc 32768 here; anything above fails (notes §2.1)


def short_run_dir(base: Path) -> Path:
    """podman's runroot and XDG_RUNTIME_DIR hold sockets (conmon's attach socket) whose paths must
    fit in 108 bytes; a deep scratch dir would not, so they live in a short per-base dir in /tmp."""
    import hashlib
    import tempfile

    tag = hashlib.sha256(os.fsencode(os.path.abspath(base))).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"la-podman-{os.getuid()}-{tag}"


def private_env(base: Path) -> dict[str, str]:
    """Environment that confines podman's state to `base` (created on first use)."""
    run = short_run_dir(base)
    for d in ("home", "config", "data", "tmp", "storage", "networks"):
        (base / d).mkdir(parents=True, exist_ok=True, mode=0o700)
    for d in ("run", "xdg"):
        (run / d).mkdir(parents=True, exist_ok=True, mode=0o700)
    storage = base / "storage.conf"
    if not storage.exists():
        storage.write_text(
            "[storage]\n"
            f'driver = "overlay"\ngraphroot = "{base / "storage"}"\nrunroot = "{run / "run"}"\n'
        )
    conf = base / "containers.conf"
    if not conf.exists():
        conf.write_text(
            '[engine]\nevents_logger = "none"\ncgroup_manager = "cgroupfs"\n'
            f'[network]\nnetwork_config_dir = "{base / "networks"}"\n'
            '[containers]\nlog_driver = "k8s-file"\n'
        )
    return {
        "HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(run / "xdg"),
        "XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "data"),
        "TMPDIR": str(base / "tmp"), "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage),
    }


def _podman_probe_dir() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"lightabaco-podman-probe-{os.getuid()}"


def probe_podman(podman: str = "podman", base: Path | None = None) -> ProbeReport:
    """Can `podman run --rootfs ...:O` start a container here, and with which OCI runtime?"""
    report = ProbeReport(backend="podman", usable=False)
    path = shutil.which(podman)
    if path is None:
        report.reasons.append("podman is not installed: `apt-get install podman runc` (optional; "
                              "bwrap is the default backend)")
        return report
    env = private_env(base or _podman_probe_dir())
    version = subprocess.run([path, "--version"], capture_output=True, text=True, env=env, check=False)
    report.version = version.stdout.strip().rsplit(" ", 1)[-1]
    rootless = os.geteuid() != 0
    report.features["rootless"] = rootless
    if rootless:
        import pwd

        problem = subuid_problem(pwd.getpwuid(os.getuid()).pw_name)
        if problem:
            report.notes.append(problem)
    runtimes = [r for r in ("crun", "runc") if shutil.which(r)]
    if not runtimes:
        report.reasons.append("no OCI runtime found: `apt-get install runc`")
        return report
    errors = []
    for runtime in runtimes:
        argv = [path, "--runtime", runtime, "run", "--rm", "--network=none", "--log-driver", "none",
                *_rootful_ulimits(), "--rootfs", "/:O", "/bin/true"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            errors.append(f"{runtime}: podman run did not finish within 60 s")
            continue
        if proc.returncode == 0:
            report.usable = True
            report.features["runtime_" + runtime] = True
            report.notes.append(f"OCI runtime: {runtime}")
            break
        err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        if "hybrid mode" in err:
            err += " (crun cannot use hybrid cgroup v1/v2 hosts: install runc)"
        errors.append(f"{runtime}: {err}")
    if not report.usable:
        report.reasons.append("podman cannot start a container: " + "; ".join(errors))
        if rootless:
            report.reasons.append("rootless podman needs /etc/subuid and /etc/subgid ranges, "
                                  "newuidmap/newgidmap (uidmap package) and user namespaces")
        return report
    cgroup_v1 = not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    report.features["cgroup_limits"] = not rootless
    if rootless and cgroup_v1:
        report.notes.append("rootless podman on cgroup v1 ignores --memory/--pids-limit; the "
                            "watchdog and rlimits apply instead")
    if not rootless:
        report.notes.append("rootful podman: actors may not run as uid 0 (it would be host root); "
                            "cgroup pids and memory limits are enforced")
    report.notes.append("podman starts in about 150-300 ms per execution (bwrap: about 5 ms)")
    return report


def _rootful_ulimits() -> list[str]:
    if os.geteuid() != 0:
        return []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(1024, hard if hard != resource.RLIM_INFINITY else 1024)
    return ["--ulimit", f"nofile={n}:{n}", "--ulimit", f"nproc={ROOTFUL_NPROC}:{ROOTFUL_NPROC}"]


class PodmanExecution(MonitoredExecution):
    rusage_is_sandbox = False
    kill_escalate_s = 15.0  # `podman run` needs a moment to notice its container died and clean up

    def __init__(self, *args, podman: str, env: dict[str, str], runtime: str,  # type: ignore[no-untyped-def]
                 cidfile: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._podman, self._penv, self._runtime, self._cidfile = podman, env, runtime, cidfile
        self._cid: str | None = None
        self._cg_cpu: int | None = None

    def _container_id(self) -> str | None:
        if self._cid is None:
            try:
                self._cid = self._cidfile.read_text().strip() or None
            except OSError:
                return None
        return self._cid

    def _watchdog(self) -> None:
        cid = self._container_id()
        if cid is not None:
            cg = CPUACCT_V1 / f"libpod-{cid}"
            try:
                self._cg_cpu = int((cg / "cpuacct.usage").read_text())
                if self.child_pid is None:
                    procs = (cg / "cgroup.procs").read_text().split()
                    self.child_pid = int(procs[0]) if procs else None
            except (OSError, ValueError):
                pass
        super()._watchdog()

    def _extra_cpu_ns(self) -> tuple[int, str] | None:
        return (self._cg_cpu, "cgroup-sampled") if self._cg_cpu is not None else None

    def _kill_sandbox(self) -> None:
        cid = self._container_id()
        if cid is not None:
            subprocess.run([self._podman, "--runtime", self._runtime, "kill", "--signal", "KILL", cid],
                           env=self._penv, capture_output=True, timeout=30, check=False)
        elif self.proc is not None:
            super()._kill_sandbox()

    def _exit_status(self, returncode: int) -> tuple[int | None, str | None]:
        lines = self._logs.tail().decode("utf-8", "replace").splitlines()
        # With --init, catatonit reports a command it cannot exec itself, and exits 1.
        init_errors = [line for line in lines if "(catatonit" in line and "failed to exec" in line]
        if returncode == 1 and init_errors:
            self.outcome.failure_detail = init_errors[-1]
            return 127, "exec"
        errors = [line for line in lines if line.startswith("Error: ")]
        if returncode in (125, 126, 127) and errors:
            self.outcome.failure_detail = errors[-1]
            if returncode == 125 and "executable file" not in errors[-1]:
                return None, "setup"
            return 127, "exec"
        return returncode, None


def podman_network(mode: str) -> str:
    """podman's --network for a mode of sandbox/network.py. `outbound` is slirp4netns with the host's
    loopback not mapped (podman 4.3 has no pasta); the API door is not built on podman yet, so `api`
    runs like `none` there (see docs/security.md)."""
    if mode == "host":
        return "host"
    if mode == "outbound":
        return "slirp4netns:allow_host_loopback=false,enable_ipv6=false"
    return "none"


class PodmanBackend:
    """`get_backend("podman", scratch=...)`."""

    name = "podman"

    def __init__(self, scratch: Path, podman: str = "podman", max_procs: int = DEFAULT_MAX_PROCS) -> None:
        self.podman = shutil.which(podman) or podman
        self.scratch = Scratch(Path(scratch))
        self.scratch.ensure()
        self.stale_collected = self.scratch.collect_stale()
        self.max_procs = max_procs
        self.base = self.scratch.root / "podman"
        self._probe: ProbeReport | None = None
        self._lock = threading.Lock()
        self._env: dict[str, str] | None = None

    def probe(self) -> ProbeReport:
        with self._lock:
            if self._probe is None:
                self._probe = probe_podman(self.podman, self.base)
                self._env = private_env(self.base)
            return self._probe

    def run(self, spec: ExecSpec) -> ExecResult:
        """Start and wait, monitoring from the calling thread (one thread hand-off less than
        start().wait(); the caller's thread is blocked here, so it outlives the sandbox)."""
        return self._prepare(spec).run_here()

    def start(self, spec: ExecSpec) -> PodmanExecution:
        """Prepare the host side (raises ExecutionSetupError) and start the sandbox (non-blocking)."""
        ex = self._prepare(spec)
        ex.start()
        return ex

    def _prepare(self, spec: ExecSpec) -> PodmanExecution:
        report = self.probe()
        if not report.usable:
            raise BackendUnavailable("podman cannot run sandboxes here: " + "; ".join(report.reasons))
        runtime = "crun" if report.features.get("runtime_crun") else "runc"
        if not spec.execution_id:
            spec.execution_id = new_execution_id()
        identity = sandbox_identity(spec)
        if identity.uid == 0 and os.geteuid() == 0:
            raise ExecutionSetupError(
                "rootful podman would run this actor as host root (uid 0 in the image); use the "
                "bwrap backend, or give the actor a non-zero uid"
            )
        command = build_command(spec)
        hostname = spec.execution_id[:63]
        env = build_env(spec, hostname, identity.home)
        exec_dir = self.scratch.create(spec.execution_id)
        logs = results = None
        try:
            # The container uid is not our uid (rootful: itself; rootless: a subuid), so both files
            # are open to "others"; the exec dir around them stays 0700.
            write_binary_data(exec_dir.path / "binary_data", spec.binary_message)
            results = ResultsSocket(exec_dir.path / "results.sock", spec.on_result, 0o666)
            logs = LogSink(spec.log_path or self.scratch.default_log_path(spec.execution_id),
                           spec.limits.log_bytes)
            argv = self._argv(spec, runtime, identity.uid, identity.gid, env, command, hostname,
                              exec_dir.path)
        except BaseException:
            for ch in (logs, results):
                if ch is not None:
                    ch.close()
            exec_dir.remove()
            raise
        plan = LaunchPlan(argv=argv, env=dict(self._env or {}), cwd=str(exec_dir.path))
        ex = PodmanExecution(spec, exec_dir, plan, logs, results, spec.limits.pids or self.max_procs,
                             podman=self.podman, env=plan.env, runtime=runtime,
                             cidfile=exec_dir.path / "cid")
        return ex

    def _argv(self, spec: ExecSpec, runtime: str, uid: int, gid: int, env: dict[str, str],
              command: list[str], hostname: str, exec_dir: Path) -> list[str]:
        lim = spec.limits
        argv = [self.podman, "--runtime", runtime, "run", "--rm", "--name", f"la-{spec.execution_id}",
                "--cidfile", str(exec_dir / "cid"), "--log-driver", "none",
                f"--network={podman_network(spec.network)}",
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--read-only",
                # --read-only alone adds /run and /var/tmp as tmpfs without a size limit (half the
                # host's RAM, counted in no process's memory); only the sized /tmp below stays
                # writable, as with bwrap.
                "--read-only-tmpfs=false",
                "--hostname", hostname, "--user", f"{uid}:{gid}",
                # Its own IPC namespace and a Docker-sized /dev/shm, as with bwrap; podman makes
                # /proc/sys read-only, so the IPC limits set below stay as set.
                "--ipc=private", "--shm-size", str(DEV_SHM_BYTES),
                "--workdir", spec.image.config.working_dir or "/",
                "--tmpfs", f"/tmp:rw,mode=1777{',size=%d' % lim.tmpfs_bytes if lim.tmpfs_bytes else ''}",
                "-v", f"{exec_dir / 'binary_data'}:{BINARY_DATA}:ro",
                "-v", f"{exec_dir / 'results.sock'}:{RESULTS_SOCK}"]
        if os.path.exists("/usr/libexec/podman/catatonit"):
            argv.append("--init")  # so SIGTERM reaches the actor (a shell as pid 1 ignores it)
        ulimits: dict[str, int] = {}
        if os.geteuid() == 0:
            # Rootful: podman's own defaults exceed root's hard limits here (EPERM); stay within.
            ulimits["nofile"] = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
            ulimits["nproc"] = ROOTFUL_NPROC
        if lim.nofile:
            ulimits["nofile"] = int(lim.nofile)
        if lim.cpu_seconds:
            ulimits["cpu"] = int(lim.cpu_seconds)
        if lim.max_file_bytes:
            ulimits["fsize"] = int(lim.max_file_bytes)
        for name, value in ulimits.items():
            argv += ["--ulimit", f"{name}={value}:{value}"]
        if lim.memory_bytes:
            if os.geteuid() != 0:
                # Rootless: no cgroup, so a per-process RLIMIT_DATA. It also binds runc's own init
                # (Go), which fails below about 128 MiB ("unable to init seccomp: cannot allocate
                # memory" at mem_limit=64m, measured): never less than that. Rootful podman
                # needs none: the memory cgroup below is the better limit.
                data = max(int(lim.memory_bytes), RUNC_MIN_DATA)
                argv += ["--ulimit", f"data={data}:{data}"]
            # SysV shared memory capped at the memory limit (podman accepts these namespaced
            # sysctls with a private IPC namespace, rootful and rootless). Rootful, the memory
            # cgroup below also charges SysV, memfd and tmpfs pages; rootless on cgroup v1 only the
            # cap and the watchdog's count of /tmp, /dev/shm and memfds apply.
            for name, value in ipc_sysctls(int(lim.memory_bytes)).items():
                argv += ["--sysctl", f"{name}={value}"]
            if os.geteuid() == 0:
                argv += ["--memory", str(lim.memory_bytes), "--memory-swap", str(lim.memory_bytes)]
        if lim.pids and os.geteuid() == 0:
            argv += ["--pids-limit", str(lim.pids)]
        for host, dest, read_only in spec.mounts:
            argv += ["-v", f"{host}:{dest}:{'ro' if read_only else 'rw'}"]
        for key, text in env.items():
            argv += ["-e", f"{key}={text}"]
        argv += ["--rootfs", f"{spec.image.rootfs}:O", *command]
        return argv


def podman_info(backend: PodmanBackend) -> dict[str, object]:
    """`podman info` under the backend's private configuration (for doctor output)."""
    backend.probe()
    proc = subprocess.run([backend.podman, "info", "--format", "json"], capture_output=True,
                          text=True, env=backend._env, check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr.strip()}
