"""The pilot manager of `lightabaco serve --slurm`: keeps a number of Slurm pilot jobs in step with the queue.

Every `slurm_poll_s` it reads the queue depth from the database (messages waiting and messages running)
and the instance's pilot jobs from `squeue` (this user's jobs with this instance's job name), then:

- wants ceil((waiting + running) / slurm_messages_per_job) pilots, within slurm_min_jobs..slurm_max_jobs;
- submits the missing ones at once with `sbatch` (pending pilots count, so a slow queue never makes it
  submit more);
- cancels (`scancel`) the pilots beyond that number once they have not been needed for slurm_idle_s,
  pending ones first, then the newest. A cancelled pilot gets SIGTERM: its worker host drains (running
  executions get drain_grace_s; a message still running then goes back to the queue and runs elsewhere).

The job name carries a hash of the home, so two instances of one user never touch each other's pilots.
sbatch exports the server's environment to the job (Slurm's default), with LIGHTABACO_DATABASE_URL set
from the settings; the pilot script itself holds no secret.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

LIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "RESIZING", "SUSPENDED", "REQUEUED")


class SlurmError(RuntimeError):
    """A Slurm command failed; the message says which and what it printed."""


@dataclass(frozen=True)
class PilotConfig:
    job_name: str
    directory: Path  # scripts and logs; must be visible on the compute nodes
    api_url: str
    token_file: Path
    keys_dir: Path | None = None  # the instance home: its jwt.key and config.key go to each pilot's home
    partition: str = ""
    account: str = ""
    time_limit: str = "01:00:00"
    max_jobs: int = 4
    min_jobs: int = 0
    messages_per_job: int = 4
    cpus_per_job: int = 2
    idle_s: float = 120.0
    poll_s: float = 10.0
    sbatch_args: tuple[str, ...] = ()
    database_url: str = ""
    python: str = field(default_factory=lambda: sys.executable)

    @classmethod
    def from_settings(cls, settings: Any) -> "PilotConfig":
        from lightabaco.images import credential as worker_credential

        home = Path(settings.home)
        api = settings.slurm_api_url or settings.public_url
        if not api:
            host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            api = f"http://{host}:{settings.port}"
        if settings.slurm_max_jobs < 1 or settings.slurm_min_jobs < 0 or settings.slurm_min_jobs > settings.slurm_max_jobs:
            raise SlurmError(f"slurm_min_jobs={settings.slurm_min_jobs} and slurm_max_jobs={settings.slurm_max_jobs} "
                             "must satisfy 0 <= min <= max and max >= 1; fix the settings")
        worker_credential.ensure(settings)  # the pilots read it (a path on a filesystem the nodes see)
        tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
        return cls(job_name=f"lightabaco-{tag}",
                   directory=Path(settings.slurm_dir).expanduser() if settings.slurm_dir else home / "slurm",
                   api_url=api.rstrip("/"), token_file=worker_credential.path_of(settings), keys_dir=home,
                   partition=settings.slurm_partition, account=settings.slurm_account,
                   time_limit=settings.slurm_time_limit, max_jobs=settings.slurm_max_jobs,
                   min_jobs=settings.slurm_min_jobs, messages_per_job=max(1, settings.slurm_messages_per_job),
                   cpus_per_job=max(1, settings.slurm_cpus_per_job), idle_s=settings.slurm_idle_s,
                   poll_s=max(0.2, settings.slurm_poll_s), sbatch_args=tuple(shlex.split(settings.slurm_sbatch_args)),
                   database_url=settings.database_url)


def wanted_pilots(waiting: int, running: int, cfg: PilotConfig) -> int:
    """How many pilots the queue justifies, within the operator's bounds."""
    need = math.ceil(max(0, waiting + running) / cfg.messages_per_job)
    return max(cfg.min_jobs, min(cfg.max_jobs, need))


class SlurmCommands:
    """sbatch / squeue / scancel, as the user, with a timeout each (a hung controller must not hang us)."""

    def __init__(self, env: dict[str, str] | None = None, timeout_s: float = 60.0) -> None:
        self.env = dict(os.environ if env is None else env)
        self.timeout_s = timeout_s

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        exe = shutil.which(argv[0], path=(env or self.env).get("PATH"))
        if exe is None:
            raise SlurmError(f"`{argv[0]}` is not on PATH; run `lightabaco serve --slurm` on a machine with the "
                             "Slurm client commands (a login node)")
        try:
            r = subprocess.run([exe, *argv[1:]], env=env or self.env, capture_output=True, text=True,
                               timeout=self.timeout_s, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"`{argv[0]}` did not answer in {self.timeout_s:g} s; is slurmctld up? "
                             "(`sinfo` should answer)") from None
        if r.returncode != 0:
            raise SlurmError(f"`{shlex.join(argv[:1] + argv[1:4])} ...` failed ({r.returncode}): "
                             f"{(r.stderr or r.stdout).strip()[:500]}; check the partition, account and limits")
        return r.stdout

    def submit(self, argv: list[str], env: dict[str, str]) -> str:
        out = self._run(["sbatch", "--parsable", *argv], env=env).strip()
        job = out.split(";")[0].strip()
        if not job.isdigit():
            raise SlurmError(f"sbatch answered {out!r}, not a job id")
        return job

    def jobs(self, name: str) -> dict[str, str]:
        """{job id: state} of this user's jobs called `name`."""
        out = self._run(["squeue", "--me", "-h", "--name", name, "-o", "%i|%T"])
        jobs = {}
        for line in out.splitlines():
            job, _, state = line.partition("|")
            if job.strip():
                jobs[job.strip()] = state.strip()
        return jobs

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            self._run(["scancel", *job_ids])


def queue_depth(now: float | None = None) -> tuple[int, int]:
    """(waiting, running) messages of all actors: the database is the only copy, so this is exact."""
    from lightabaco.store.models import Message

    now = time.time() if now is None else now
    leased = (Message.lease_owner.is_null(False)) & (Message.lease_until >= now)
    running = Message.select().where(leased).count()
    waiting = Message.select().count() - running
    return waiting, running


class PilotManager:
    """Runs `step()` every poll interval in a thread; `stop()` cancels every pilot of this instance."""

    def __init__(self, cfg: PilotConfig, slurm: SlurmCommands | None = None,
                 depth: Callable[[], tuple[int, int]] = queue_depth,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.slurm = slurm or SlurmCommands()
        self.depth = depth
        self.clock = clock
        self.surplus_since: float | None = None
        self.submitted: list[str] = []  # in submission order, to cancel the newest first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.script = self._write_script()

    def _write_script(self) -> Path:
        d = self.cfg.directory
        if not d.exists():
            d.mkdir(parents=True)
            os.chmod(d, 0o700)  # ours: private; a directory the operator named keeps its mode
        script = d / "pilot.sh"
        argv = [self.cfg.python, "-m", "lightabaco.slurm.pilot", "--api", self.cfg.api_url,
                "--token-file", str(self.cfg.token_file), "--workers", str(self.cfg.cpus_per_job)]
        if self.cfg.keys_dir is not None:
            argv += ["--keys-dir", str(self.cfg.keys_dir)]
        tmp = d / f".pilot.sh.{os.getpid()}"
        tmp.write_text("#!/bin/sh\n# A lightabaco pilot: a worker host on this node, until cancelled or out of time.\n"
                       f"# Written by `lightabaco serve --slurm`; submitted as job {self.cfg.job_name}.\n"
                       f"exec {shlex.join(argv)}\n")
        os.chmod(tmp, 0o700)
        os.replace(tmp, script)
        return script

    def sbatch_argv(self) -> list[str]:
        c = self.cfg
        argv = ["--job-name", c.job_name, "--nodes", "1", "--ntasks", "1", "--cpus-per-task", str(c.cpus_per_job),
                "--time", c.time_limit, "--output", str(c.directory / "pilot-%j.log"), "--signal", "TERM@60"]
        if c.partition:
            argv += ["--partition", c.partition]
        if c.account:
            argv += ["--account", c.account]
        return [*argv, *c.sbatch_args, str(self.script)]

    def job_env(self) -> dict[str, str]:
        env = dict(self.slurm.env)
        if self.cfg.database_url:
            env["LIGHTABACO_DATABASE_URL"] = self.cfg.database_url
        return env

    def step(self) -> dict[str, Any]:
        """One look at the queue and the pilots; returns what it saw and did (for logs and tests)."""
        waiting, running = self.depth()
        jobs = {j: s for j, s in self.slurm.jobs(self.cfg.job_name).items() if s in LIVE_STATES}
        want = wanted_pilots(waiting, running, self.cfg)
        done: dict[str, Any] = {"waiting": waiting, "running": running, "pilots": dict(jobs), "want": want,
                                "submitted": [], "cancelled": []}
        if len(jobs) < want:
            self.surplus_since = None
            for _ in range(want - len(jobs)):
                job = self.slurm.submit(self.sbatch_argv(), self.job_env())
                self.submitted.append(job)
                done["submitted"].append(job)
            log.info("slurm: %d waiting, %d running: submitted pilot(s) %s", waiting, running,
                     ", ".join(done["submitted"]))
        elif len(jobs) > want:
            now = self.clock()
            if self.surplus_since is None:
                self.surplus_since = now
            elif now - self.surplus_since >= self.cfg.idle_s:
                # pending first (they cost nothing to drop), then the newest (job ids only grow)
                victims = sorted(jobs, key=lambda j: (jobs[j] != "PENDING", -int(j) if j.isdigit() else 0))
                victims = victims[: len(jobs) - want]
                self.slurm.cancel(victims)
                done["cancelled"] = victims
                self.surplus_since = None
                log.info("slurm: %d waiting, %d running: cancelled idle pilot(s) %s", waiting, running,
                         ", ".join(victims))
        else:
            self.surplus_since = None
        return done

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except SlurmError as exc:
                log.warning("slurm: %s", exc)
            except Exception:  # a database hiccup must not end the manager
                log.exception("slurm: pilot manager step failed; trying again")
            self._stop.wait(self.cfg.poll_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="slurm-pilots", daemon=True)
        self._thread.start()

    def stop(self, cancel: bool = True) -> None:
        """Stop looking; with `cancel`, scancel every pilot of this instance (they drain on SIGTERM)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if cancel:
            try:
                self.slurm.cancel(list(self.slurm.jobs(self.cfg.job_name)))
            except SlurmError as exc:
                log.warning("slurm: could not cancel the pilots on shutdown (%s); `scancel --name %s`",
                            exc, self.cfg.job_name)
