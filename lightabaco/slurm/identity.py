"""Which machine a worker host is, and in which Slurm job: recorded with what it runs, so an execution's
record can say where it ran (`host_identity()` is read by the worker host; standard library only)."""

from __future__ import annotations

import os
import socket
from typing import Mapping


def host_identity(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """{"host": hostname, "slurm_job_id": SLURM_JOB_ID or None, "node": SLURMD_NODENAME or None}.

    Slurm sets both variables in every job step; outside Slurm both are None."""
    env = os.environ if environ is None else environ
    return {"host": socket.gethostname(),
            "slurm_job_id": (env.get("SLURM_JOB_ID") or "").strip() or None,
            "node": (env.get("SLURMD_NODENAME") or "").strip() or None}


def describe(identity: Mapping[str, str | None]) -> str:
    """A short label: `node042 (Slurm job 1234)`, or the host name outside Slurm."""
    where = identity.get("node") or identity.get("host") or "?"
    job = identity.get("slurm_job_id")
    return f"{where} (Slurm job {job})" if job else str(where)
