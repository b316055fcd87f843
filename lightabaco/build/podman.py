"""`lightabaco images build --engine podman`: podman builds, the image store imports its oci-archive."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .containerfile import BuildError
from .results import BuildResult, Progress, Store


def build_podman(context: Path, store: Store, *, cache_dir: Path, tag: str | None, file: str | None,
                  build_args: dict[str, str] | None, network: str, progress: Progress | None,
                  started: float) -> BuildResult:
    podman = shutil.which("podman")
    if not podman:
        raise BuildError("podman is not installed: `sudo apt-get install -y podman runc`, or use --engine bwrap")
    state = _mkdir(cache_dir / "podman")
    # podman refuses a runroot longer than 50 characters: keep it short, derived from the state dir.
    suffix = hashlib.sha256(str(state).encode()).hexdigest()[:8]
    runroot = Path(tempfile.gettempdir()) / f"lab-pb-{os.getuid()}-{suffix}"
    base_argv = [podman, "--root", str(state / "root"), "--runroot", str(runroot)]
    if shutil.which("runc"):
        base_argv += ["--runtime", "runc"]  # crun fails on hybrid cgroup hosts (sandbox-notes §2)
    name = tag or "localhost/lightabaco-build:latest"
    argv = base_argv + ["build", "--isolation=chroot", "-t", name]
    if file:
        argv += ["-f", str(context / file)]
    for k, v in (build_args or {}).items():
        argv += ["--build-arg", f"{k}={v}"]
    if network == "none":
        argv += ["--network=none"]
    argv.append(str(context))
    if progress:
        progress("build", 0, None, "podman build")
    env = {**os.environ, "TMPDIR": str(_mkdir(state / "tmp"))}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BuildError(f"podman build failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    archive = state / "tmp" / "image.tar"
    archive.unlink(missing_ok=True)
    proc = subprocess.run(base_argv + ["save", "--format", "oci-archive", "-o", str(archive), name],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BuildError(f"podman save failed: {proc.stderr.strip()[-1000:]}")
    images = store.import_path(archive, tag=tag, progress=progress)
    archive.unlink(missing_ok=True)
    shutil.rmtree(runroot, ignore_errors=True)  # runtime state only; the layers stay under --root
    return BuildResult(images[0], images[0].config_digest, False, time.monotonic() - started, ["podman build"])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
