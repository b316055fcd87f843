"""What a pilot job runs on its compute node: `python -m lightabaco.slurm.pilot --api URL --token-file F`.

1. Says where it is (host, node, Slurm job: lightabaco.slurm.identity) in its log.
2. Makes a node-local home (`--home`, else $TMPDIR or /tmp + /lightabaco-pilot-<job id>): SQLite is not
   used (the database is LIGHTABACO_DATABASE_URL, exported by sbatch), the image store is local.
3. Pulls the images of the registered actors from the API server's image store (`/v2/`, with the worker
   credential) - and keeps doing so every few seconds for actors registered later - so the worker host
   never needs an external registry.
4. Runs the worker host in the foreground until Slurm ends the job (SIGTERM: it drains), then removes the
   node-local home.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
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
    """The worker host this pilot runs. The split workers mode of the server (supervisor and ticker on
    this home, the shared database from LIGHTABACO_DATABASE_URL); `lightabaco workers --api` replaces it
    once it exists (issue 12's worker-host command)."""
    return [sys.executable, "-m", "lightabaco.server", "workers", "--home", str(home), "--workers", str(workers)]


def sync_images(store: Any, api: str, credential: str) -> int:
    """Pull every registered actor's image that this node's store lacks. Returns how many were pulled."""
    from lightabaco.images.distribution import pull_from_api
    from lightabaco.store.models import Actor

    pulled = 0
    for image, digest in {(a.image, a.image_digest) for a in Actor.select(Actor.image, Actor.image_digest)}:
        have = store.digest_of(image)
        if have is not None and (digest is None or have == digest):
            continue
        try:
            pull_from_api(store, api, credential, image, image_id=digest)
            pulled += 1
            log.info("pulled %s from the API server", image)
        except Exception as exc:  # one image failing must not stop the others (the actor shows its error)
            log.warning("could not pull %s from the API server: %s", image, exc)
    return pulled


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightabaco.slurm.pilot")
    p.add_argument("--api", required=True, help="the API server's URL as this node reaches it")
    p.add_argument("--token-file", required=True, help="the worker credential (a copy of <home>/worker-token)")
    p.add_argument("--home", help="node-local home (default $TMPDIR/lightabaco-pilot-<job id>)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sync-s", type=float, default=3.0, help="how often to look for new actors' images")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    identity = host_identity()
    log.info("pilot on %s: host=%s node=%s slurm_job_id=%s", describe(identity), identity["host"],
             identity["node"], identity["slurm_job_id"])
    home = node_home(args.home, identity)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)  # as root the sandbox user must traverse to the image store
    credential = Path(args.token_file).expanduser().read_text().strip()

    from lightabaco.config import Settings
    from lightabaco.images import open_image_store
    from lightabaco.store import db

    settings = Settings.from_env(home=home, workers=args.workers)
    if not settings.database_url:
        log.error("LIGHTABACO_DATABASE_URL is not set: a pilot needs the shared PostgreSQL database")
        return 2
    db.connect(settings)
    store = open_image_store(settings)
    stop = threading.Event()

    def syncing() -> None:
        while not stop.is_set():
            try:
                sync_images(store, args.api, credential)
            except Exception:
                log.exception("image sync failed; trying again")
            stop.wait(args.sync_s)

    sync_images(store, args.api, credential)
    threading.Thread(target=syncing, name="image-sync", daemon=True).start()
    env = dict(os.environ, LIGHTABACO_HOME=str(home))
    child = subprocess.Popen(worker_host_argv(args.api, home, args.workers), env=env)

    def forward(sig: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    stop.set()
    log.info("worker host ended (%s); removing %s", code, home)
    shutil.rmtree(home, ignore_errors=True)
    return 0 if code in (0, -signal.SIGTERM) else code


if __name__ == "__main__":
    sys.exit(main())
