"""What a pilot job runs on its compute node: `python -m lightabaco.slurm.pilot --api URL --token-file F`.

1. Says where it is (host, node, Slurm job: lightabaco.slurm.identity) in its log.
2. Makes a node-local home (`--home`, else $TMPDIR or /tmp + /lightabaco-pilot-<job id>): SQLite is not
   used (the database is LIGHTABACO_DATABASE_URL, exported by sbatch), the image store is local.
3. Runs the worker host (`python -m lightabaco workers --api URL --home DIR --pool N`) in the foreground
   until Slurm ends the job (SIGTERM: it drains), then removes the node-local home. The worker host
   fetches each image it needs from the API server's store (`/v2/`, with the worker credential named by
   `--token-file`) when it first claims a message for it, and records `node (Slurm job N)` as the `host`
   of every execution it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from lightabaco.slurm.identity import describe, host_identity

log = logging.getLogger("lightabaco.slurm.pilot")


def node_home(given: str | None, identity: dict[str, str | None]) -> Path:
    if given:
        return Path(given).expanduser()
    base = os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / f"lightabaco-pilot-{identity.get('slurm_job_id') or os.getpid()}"


def worker_host_argv(api: str, home: Path, workers: int) -> list[str]:
    """The worker host this pilot runs: `lightabaco workers --api URL --home DIR --pool N`. The database
    URL stays in the environment (LIGHTABACO_DATABASE_URL, from sbatch) rather than on the command line,
    where every user of the node could read its password (/proc/*/cmdline)."""
    return [sys.executable, "-m", "lightabaco", "workers", "--api", api, "--home", str(home),
            "--pool", str(workers)]


def worker_host_env(home: Path, token_file: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker host's environment: this job's (the database URL, the instance's settings), its home,
    and where its credential is."""
    return dict(os.environ if environ is None else environ, LIGHTABACO_HOME=str(home),
                LIGHTABACO_WORKER_TOKEN_FILE=str(token_file))


# Secrets the worker host needs from the instance home: the key that signs `_abaco_access_token` for
# actors with `token: true` (the API checks it) and the key that decrypts secret actor configs.
INSTANCE_KEYS = ("jwt.key", "config.key")


def copy_instance_keys(keys_dir: Path, home: Path) -> list[str]:
    """Copy the instance keys that exist in `keys_dir` into the node-local `home` (mode 0600, never
    through a link). Returns the names copied; a missing key is skipped (the API server makes it on
    first use, and the worker host then reports what fails)."""
    copied = []
    for name in INSTANCE_KEYS:
        try:
            fd = os.open(keys_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        with os.fdopen(fd, "rb") as src:
            data = src.read(1 << 16)
        out = os.open(home / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(out, "wb") as dst:
            dst.write(data)
        copied.append(name)
    return copied


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightabaco.slurm.pilot")
    p.add_argument("--api", required=True, help="the API server's URL as this node reaches it")
    p.add_argument("--token-file", required=True, help="the worker credential (a copy of <home>/worker-token)")
    p.add_argument("--home", help="node-local home (default $TMPDIR/lightabaco-pilot-<job id>)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--keys-dir", help="the instance home: its jwt.key and config.key are copied to this node's "
                   "home, so actor tokens and secret configs work here")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    identity = host_identity()
    log.info("pilot on %s: host=%s node=%s slurm_job_id=%s", describe(identity), identity["host"],
             identity["node"], identity["slurm_job_id"])
    if not os.environ.get("LIGHTABACO_DATABASE_URL"):
        log.error("LIGHTABACO_DATABASE_URL is not set: a pilot needs the shared PostgreSQL database")
        return 2
    token_file = Path(args.token_file).expanduser().absolute()
    if not token_file.is_file():
        log.error("the worker credential %s is not readable from this node; put slurm_dir (or "
                  "worker_token_file) on a filesystem the compute nodes share", token_file)
        return 2
    home = node_home(args.home, identity)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)  # as root the sandbox user must traverse to the image store
    if args.keys_dir:
        log.info("instance keys copied: %s", ", ".join(copy_instance_keys(Path(args.keys_dir), home)) or "none")
    child = subprocess.Popen(worker_host_argv(args.api, home, args.workers),
                             env=worker_host_env(home, token_file))

    def forward(sig: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    log.info("worker host ended (%s); removing %s", code, home)
    shutil.rmtree(home, ignore_errors=True)
    return 0 if code in (0, -signal.SIGTERM) else code


if __name__ == "__main__":
    sys.exit(main())
