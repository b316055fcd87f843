"""Choosing a sandbox backend: `get_backend("auto" | "bwrap" | "podman", scratch=...)`.

"auto" prefers bwrap (about 5 ms per execution, no subuid, no daemon) and falls back to podman
(about 150 ms, needs its setuid helpers or root) only when bwrap cannot run here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .bwrap import BwrapBackend
from .errors import BackendUnavailable
from .types import ExecResult, ExecSpec, ProbeReport, SandboxBackend

if TYPE_CHECKING:
    from .podman import PodmanBackend

BACKENDS = ("bwrap", "podman")


def get_backend(name: str = "auto", scratch: Path | None = None) -> BwrapBackend | "PodmanBackend":
    """A ready backend whose probe passed, or BackendUnavailable naming every reason and fix."""
    if scratch is None:
        raise TypeError("get_backend() needs scratch=<directory for per-execution files>")
    if name not in ("auto", *BACKENDS):
        raise BackendUnavailable(f"unknown backend {name!r}: choose auto, bwrap or podman")
    candidates = BACKENDS if name == "auto" else (name,)
    reasons: list[str] = []
    for candidate in candidates:
        backend = _make(candidate, Path(scratch))
        report = backend.probe()
        if report.usable:
            return backend
        reasons.append(f"{candidate}: " + "; ".join(report.reasons or ["not usable"]))
    raise BackendUnavailable(
        "no sandbox backend can run here - " + " | ".join(reasons)
        + " (run `lightabaco doctor` for details)"
    )


def _make(name: str, scratch: Path) -> BwrapBackend | "PodmanBackend":
    if name == "bwrap":
        return BwrapBackend(scratch)
    from .podman import PodmanBackend

    return PodmanBackend(scratch)


def probe_all() -> list[ProbeReport]:
    """One report per backend, for `lightabaco doctor` (no scratch directory is touched)."""
    from .podman import probe_podman
    from .probe import probe_bwrap

    return [probe_bwrap(), probe_podman()]


def run(backend: SandboxBackend, spec: ExecSpec) -> ExecResult:
    """Start and wait: the convenience for callers that do not need the Execution handle."""
    blocking_run = getattr(backend, "run", None)
    if blocking_run is not None:
        return blocking_run(spec)
    result = backend.start(spec).wait()
    assert result is not None
    return result
