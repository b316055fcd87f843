"""The data that crosses the sandbox library's boundary.

These types are the contract between the image store (which produces a PreparedImage), the backends
(which turn an ExecSpec into an ExecResult) and whoever drives them (the service's workers, the CLI,
the benchmarks). Standard library only: the sandbox package must stay usable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

from .network import ApiRelay

# Abaco's documented maximum size of one result datagram.
MAX_RESULT_BYTES = 131072


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI/Docker image config ("config" object) that running an image needs."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)  # "KEY=value" strings, in image order
    working_dir: str = ""
    user: str = ""  # "", "uid", "uid:gid", "name", "name:group"
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedImage:
    """An image unpacked and ready to run: a read-only flattened rootfs plus its config."""

    config_digest: str  # "sha256:..." - the image ID, the same for gzip/zstd/docker-archive copies
    rootfs: Path  # the flattened tree; mount points (proc, dev, tmp, /_abaco_*) already exist
    config: ImageConfig
    reference: str = ""  # the name it was asked for by, e.g. "docker.io/abacosamples/wc:latest"
    architecture: str = ""
    os: str = ""


@dataclass
class Limits:
    """Per-execution limits. None means "no limit" for that resource."""

    wall_timeout_s: float | None = 300.0
    cpu_seconds: int | None = None  # RLIMIT_CPU per process (and cgroup cpu where delegated)
    memory_bytes: int | None = None  # RLIMIT_AS/DATA per process (cgroup memory.max where delegated)
    max_file_bytes: int | None = None  # RLIMIT_FSIZE
    nofile: int | None = 1024  # RLIMIT_NOFILE
    pids: int | None = None  # processes: RLIMIT_NPROC set inside the sandbox's user namespace (so it
    # counts that sandbox only) plus a watchdog; cgroup pids.max where delegated
    tmpfs_bytes: int | None = 256 << 20  # size of the writable /tmp
    log_bytes: int | None = 1_000_000  # stdout+stderr cap; the rest is dropped behind a marker
    max_cpus: float | None = None  # cgroup cpu quota where delegated


@dataclass
class ExecSpec:
    """One execution: an image, one message, and how to run it."""

    image: PreparedImage
    execution_id: str = ""  # used for scratch names and the sandbox hostname; generated when empty
    cmd: list[str] | None = None  # overrides the image Cmd (Entrypoint kept, Docker semantics)
    env: dict[str, str | None] = field(default_factory=dict)  # layered over the image Env; None = unset
    binary_message: bytes | None = None  # delivered at /_abaco_binary_data
    use_image_user: bool = False  # Abaco's use_container_uid: run as the image USER
    uid_gid: tuple[int, int] | None = None  # explicit uid/gid inside the sandbox (overrides the above)
    # none | api | outbound | host (sandbox/network.py); api and outbound get the API door below
    network: str = "none"
    api_relay: ApiRelay | None = None  # where 127.0.0.1:<port> inside the sandbox leads (the API)
    limits: Limits = field(default_factory=Limits)
    mounts: list[tuple[Path, str, bool]] = field(default_factory=list)  # (host, container, read_only)
    on_result: Callable[[bytes], None] | None = None  # called for each result datagram, while running;
    # datagrams it takes are not kept in ExecResult.results
    log_path: Path | None = None  # where stdout+stderr go; a scratch file when None


@dataclass
class ExecResult:
    """What happened, after the execution is over (normally, by timeout or by kill)."""

    execution_id: str
    exit_code: int | None  # the actor's exit status; 128+N when killed by signal N (Docker style)
    signal: int | None  # the signal that ended the actor's main process, if any
    timed_out: bool
    killed: bool  # ended by Execution.kill() (force quit)
    failure: Literal[None, "setup", "exec"]  # sandbox could not be set up / command could not start
    reason: str  # one human sentence: "exited with status 0", "killed after 2.0 s wall-clock limit", ...
    log_path: Path  # stdout and stderr interleaved in order, capped by Limits.log_bytes
    log_truncated: bool
    results: list[bytes]  # datagrams in arrival order (each <= MAX_RESULT_BYTES), except those
    # already handed to ExecSpec.on_result (so a worker does not hold them all in memory)
    results_rejected: int  # datagrams over MAX_RESULT_BYTES, counted and dropped
    cpu_ns: int  # user+system of the whole process tree
    io: dict[str, int]  # rchar, wchar, read_bytes, write_bytes
    max_rss_kb: int
    wall_s: float
    start_time: float  # epoch seconds
    end_time: float
    stats_source: str  # "wait4", "wait4+snapshot", "cgroup", ...

    @property
    def io_bytes(self) -> int:
        """The single number behind Abaco's `io` field: bytes read plus written."""
        return int(self.io.get("rchar", 0)) + int(self.io.get("wchar", 0))


class Execution(Protocol):
    """A started execution. Backends return one from start()."""

    id: str

    def wait(self, timeout: float | None = None) -> ExecResult | None:
        """Block until the execution is over and return its result; None if `timeout` passed first."""

    def kill(self, grace_s: float = 0.0) -> None:
        """Force-quit: end the whole process tree (SIGTERM, then SIGKILL after grace_s)."""

    def poll(self) -> ExecResult | None:
        """The result if the execution is over, else None, without blocking."""


@dataclass
class ProbeReport:
    """What a backend can do on this host, in words a user can act on."""

    backend: str
    usable: bool
    version: str = ""
    reasons: list[str] = field(default_factory=list)  # why not usable, each with the fix
    notes: list[str] = field(default_factory=list)  # degraded features (no pids cgroup, no overlay...)
    features: dict[str, bool] = field(default_factory=dict)


class SandboxBackend(Protocol):
    name: str

    def probe(self) -> ProbeReport: ...

    def start(self, spec: ExecSpec) -> Execution: ...
