"""Instance settings: command-line overrides, then LIGHTABACO_* environment variables, then defaults.

One frozen-looking dataclass that every part of the service receives (through the services container).
Worker processes rebuild it from the same environment plus the `--home` they are given, so a setting
never needs to be passed twice.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

ENV_PREFIX = "LIGHTABACO_"


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable and the accepted values."""


def default_home() -> Path:
    """LIGHTABACO_HOME, else ~/.lightabaco; for root /var/lib/lightabaco, because sandboxes then run as
    an unprivileged user who cannot traverse /root to reach the image store."""
    env = os.environ.get(ENV_PREFIX + "HOME")
    if env:
        return Path(env).expanduser()
    if os.getuid() == 0:
        return Path("/var/lib/lightabaco")
    return Path.home() / ".lightabaco"


@dataclass
class Settings:
    home: Path = field(default_factory=default_home)
    host: str = "127.0.0.1"
    port: int = 8000
    # Runner processes of the shared pool (all actors together); 0 = `pool_size` (issue 9 block).
    # Kept for `--workers N` command lines: a non-zero value here sets the pool size.
    workers: int = 0
    backend: str = "auto"  # auto | bwrap | podman
    auth: str = "token"  # token | none
    case: str = "snake"  # snake | camel
    database_url: str = ""  # empty: SQLite file <home>/lightabaco.db
    tenant: str = "DEV"
    version: str = "1.0.0-lightabaco"  # the envelope's "version"
    public_url: str = ""  # base URL advertised in _links and _abaco_api_server; empty: from the request
    # Synchronous messages: the server-side deadline after which the request answers 504.
    sync_timeout_s: float = 30.0
    sync_max_queued: int = 3  # sync requests are refused when more messages than this are queued
    # Per-execution limits (an actor's own max_run_time / mem_limit / max_cpus win).
    default_max_run_time: float = 300.0  # seconds; <= 0 means unlimited
    # Network mode of actors that do not choose one: none | api | outbound | host (see the
    # "network modes" block below; `host` here also keeps actors registered before network modes
    # existed on the host network, as before).
    network: str = "api"
    # Default memory cap per execution (RLIMIT_DATA per process plus a watchdog on the tree's RSS), so a
    # memory hog cannot take the host down; an actor's own mem_limit wins. "" = unlimited.
    mem_limit: str = "2g"
    max_cpus: float = 0.0  # 0 = unlimited
    max_body_bytes: int = 10_000_000  # largest request body (binary messages included)
    max_log_bytes: int = 1_000_000  # execution logs are truncated beyond this, with a marker
    log_ex: int = 43200  # default log lifetime in seconds
    log_ex_limit: int = 86400  # an actor's log_ex is capped to this
    results_ttl_s: int = 3600  # results expire 60 minutes after they were sent
    default_token: bool = False  # default of the actor "token" attribute
    token_ttl_s: int = 14400
    autoscaling: bool = True
    max_workers_per_actor: int = 6
    worker_idle_s: float = 600.0  # autoscaler: stop idle extra workers after this long
    lease_s: float = 30.0  # a claimed message returns to the queue if its worker stops renewing
    max_attempts: int = 3  # deliveries of one message before its execution is marked ERROR
    trust_v2_jwt: bool = False
    strict_cron_500: bool = False  # Abaco answers 500 for a bad cron unit; we answer 400 unless set
    cron_tick_s: float = 10.0
    housekeeping_s: float = 30.0
    log_level: str = "info"

    # -- images: unpack quotas, mount points --
    # Per image: most bytes of file data its layers may unpack to, and most files, directories and
    # links it may create (a 2 MiB gzip can expand to 2 GiB or to 226k inodes). 0 = unlimited.
    image_max_bytes: int = 8 << 30
    image_max_inodes: int = 500_000
    # Per home: quota on all unpacked images of the image store together (checked before and during
    # each unpack; `lightabaco images rm` frees space). 0 = unlimited.
    images_max_bytes: int = 64 << 30
    images_max_inodes: int = 4_000_000

    # -- messages: environment rules, result and queue quotas --
    # Results one execution may store (datagrams past either cap are dropped, and the execution's
    # final_state and log say so). Empty datagrams count as results too. <= 0 means no cap.
    results_max_bytes_per_execution: int = 64 << 20
    results_max_count_per_execution: int = 10_000
    # Results stored (not yet read or expired) over all executions of one owner's actors.
    results_max_bytes_per_user: int = 512 << 20
    results_max_count_per_user: int = 100_000
    # Messages one sender may have waiting or running (not finished) at once; more answer 429.
    max_queued_messages_per_user: int = 1000

    # -- sharing: configs, tenants --

    # -- availability: search, connections, database --
    # Search: a query (keys and values together) longer than this is refused with 400.
    search_max_query_chars: int = 8192
    # Search: `.in`/`.nin`/`.eq` lists longer than this are refused with 400.
    search_max_list_items: int = 200
    # Search: a search still filtering after this many seconds stops and answers 503.
    search_timeout_s: float = 5.0
    # HTTP: open connections at most (also capped below the file-descriptor limit); a new connection
    # beyond it first evicts the oldest one still waiting for its headers, else it is refused with 503.
    max_connections: int = 1000
    # HTTP: a request line and headers not complete this many seconds after they began: connection closed.
    header_timeout_s: float = 10.0
    # HTTP: a request body not fully received this many seconds after its headers: connection closed.
    body_timeout_s: float = 60.0
    # HTTP: bodies are kept in memory up to this size each; larger ones are spooled to a temporary file.
    body_memory_bytes: int = 262_144
    # HTTP: bodies being received by all requests together may not exceed this; beyond, 503.
    max_inflight_body_bytes: int = 268_435_456
    # Database: an API request waits at most this long for a lock held by another writer, then 503.
    api_db_busy_timeout_s: float = 3.0

    # -- sandbox: memory accounting --

    # -- outbound: pulls, webhooks, address policy --
    # Pulls made for API users' actors may reach loopback, link-local and private registries (on a
    # single-user laptop); off by default. The owner's CLI (`lightabaco images pull`) is never limited.
    registry_allow_private: bool = False
    # Registries the operator trusts even on private addresses: comma-separated `host` or `host:port`
    # (e.g. `127.0.0.1:5000` for a local registry).
    registry_allowed_hosts: str = ""
    pull_timeout_s: float = 900.0  # one pull's overall deadline (download and unpack), then the actor is ERROR
    pull_read_timeout_s: float = 30.0  # no byte from the registry for this long abandons the pull
    pull_min_rate_bytes_s: int = 10_000  # a download slower than this on average (after 30 s) is abandoned
    pull_max_image_bytes: int = 8 << 30  # compressed bytes one image pull may download
    pull_concurrency: int = 2  # image pulls at once, outside the `workers` cap (pulls never hold their slots)
    pull_concurrency_per_user: int = 1  # pulls one actor owner may run at once
    # Webhooks may reach loopback/private addresses (the server's own API is always allowed).
    webhook_allow_private: bool = False
    webhook_allowed_hosts: str = ""  # comma-separated `host` or `host:port` webhooks may reach anyway
    webhook_connect_timeout_s: float = 3.0  # per delivery attempt
    webhook_timeout_s: float = 10.0  # a whole delivery attempt (connect, send, answer), then it is retried
    webhook_concurrency: int = 8  # deliveries in flight at once (one at a time per destination)

    # -- network modes (issue 11): what actors' sandboxes may reach --
    # Modes actors of non-admin users may choose (comma-separated, of none, api, outbound, host).
    network_allowed: str = "none,api,outbound"
    # Admins may register actors with network `host` (the host's loopback and everything else).
    network_allow_host: bool = False
    # Where the API door of `api`/`outbound` sandboxes leads: `host:port`, `[v6]:port` or the path
    # of a Unix socket; empty: this server's --host/--port (0.0.0.0 and :: become loopback).
    network_api_upstream: str = ""
    # -- issue 9: pool, health, shutdown, disk --
    # On SIGTERM running executions get this long to finish; what is still running then is stopped and
    # its message goes back to the queue (it runs again after the next start).
    drain_grace_s: float = 30.0
    # -- web (issue 13): dashboard, metrics, API description --
    # Who may read /metrics: `loopback` (clients on this machine; others need the owner token), `token`
    # (the owner token always; use it behind a reverse proxy on the same machine), or `open`.
    metrics_access: str = "loopback"
    log_stream_poll_s: float = 0.5  # how often an open live-log stream re-reads the log (one reader per stream)
    log_stream_max_s: float = 3600.0  # a live-log stream closes after this; the dashboard then reopens it
    # -- issue 9/12: shared pool, worker hosts, housekeeping --
    # Runner processes in this host's shared pool; every actor's workers are slots over it. 0 = the
    # number of cores (at least 2). `workers` (above), when non-zero, wins for old command lines.
    pool_size: int = 0
    # Which host ran what (workers list, executions' `host`): this machine's name by default. Set a
    # distinct name for each worker host started on the same machine.
    host_name: str = ""
    # How often a running execution's log is copied into the database (so the API reads it when the
    # execution runs on another host); 0 = only at the end (one machine: the API reads the file).
    live_log_push_s: float = 0.0
    # Finished executions (with their logs and results) older than this are deleted by housekeeping;
    # 0 keeps them forever.
    execution_retention_s: float = 30 * 86400.0
    # A worker host (`lightabaco workers --api URL`): the API it fetches images it lacks from (see
    # workers/imagesource.py); empty: this host's image store only (one machine, or a shared store).
    images_source: str = ""
    # Housekeeping removes unpacked images no name needs any more (a tag moved, an image was removed)
    # this often, when no execution runs on this host; 0 = never (`lightabaco images prune` by hand).
    images_gc_s: float = 3600.0

    # -- issue 12: worker hosts' images, Slurm pilots --
    # The worker credential (worker hosts read the API's image store with it at /v2/); empty:
    # <home>/worker-token, made by the API server at start-up. Copy the file to each worker host.
    worker_token_file: str = ""
    # `serve --slurm`: submit Slurm pilot jobs that run worker hosts, instead of running executions here.
    slurm: bool = False
    slurm_partition: str = ""  # sbatch --partition (empty: the cluster's default)
    slurm_account: str = ""  # sbatch --account (empty: your default account)
    slurm_time_limit: str = "01:00:00"  # sbatch --time of each pilot; a pilot ending drains like a SIGTERM
    slurm_max_jobs: int = 4  # pilot jobs (pending or running) at most
    slurm_min_jobs: int = 0  # pilot jobs kept even when nothing is queued
    slurm_messages_per_job: int = 4  # queued or running messages that justify one more pilot
    slurm_cpus_per_job: int = 2  # sbatch --cpus-per-task, and the pilot's worker processes
    slurm_idle_s: float = 120.0  # a pilot not needed for this long is cancelled (scancel)
    slurm_poll_s: float = 10.0  # how often the queue depth and the pilots are looked at
    # Directory for pilot scripts and logs; must be visible on the compute nodes. Empty: <home>/slurm.
    slurm_dir: str = ""
    # The API URL as the compute nodes reach it; empty: public_url, else http://<host>:<port>.
    slurm_api_url: str = ""
    slurm_sbatch_args: str = ""  # more sbatch options, shell-quoted (e.g. "--mem=8G --qos=normal")

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from overrides (None values are ignored), then LIGHTABACO_* variables."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name
            if overrides.get(name) is not None:
                values[name] = _coerce(name, overrides[name], hints[name])
                continue
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _coerce(name, raw, hints[name])
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(f.name for f in fields(cls))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        self.home = Path(self.home).expanduser()
        choices = {"backend": ("auto", "bwrap", "podman"), "auth": ("token", "none"),
                   "case": ("snake", "camel"), "network": ("none", "api", "outbound", "host")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)!r} is not valid; "
                                    f"use one of: {', '.join(allowed)}")
        if self.workers < 0 or self.pool_size < 0:
            raise SettingsError(f"workers/pool_size must be 0 (automatic) or more (got {self.workers}/"
                                f"{self.pool_size}); pass --workers N or LIGHTABACO_POOL_SIZE=N")

    def pool_processes(self) -> int:
        """Runner processes in this host's pool: `workers`, else `pool_size`, else the cores (min 2)."""
        if self.workers > 0:
            return self.workers
        if self.pool_size > 0:
            return self.pool_size
        return max(2, os.cpu_count() or 2)

    def host_id(self) -> str:
        """The name this host records on what it runs."""
        if self.host_name:
            return self.host_name
        import socket

        return socket.gethostname()

    def to_env(self) -> dict[str, str]:
        """The LIGHTABACO_* variables that reproduce these settings in a child process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = "true" if value else "false"
            out[ENV_PREFIX + f.name.upper()] = str(value)
        return out

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    # -- derived paths ---------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        return self.home / "lightabaco.db"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def exec_dir(self) -> Path:
        return self.home / "exec"

    @property
    def run_dir(self) -> Path:
        """Doorbell sockets and pid files: small, per running server."""
        return self.home / "run"

    @property
    def token_path(self) -> Path:
        return self.home / "token"


def _coerce(name: str, value: Any, kind: Any) -> Any:
    kind_s = getattr(kind, "__name__", str(kind))
    try:
        if kind is bool or kind_s == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is int or kind_s == "int":
            return int(value)
        if kind is float or kind_s == "float":
            return float(value)
        if kind is Path or "Path" in kind_s:
            return Path(str(value)).expanduser()
        return str(value)
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={value!r} is not a valid {kind_s}; "
                            f"fix the value or unset it") from None
