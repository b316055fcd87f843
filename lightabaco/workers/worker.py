"""A worker process: bound to one actor revision, it prepares the image, then claims and runs that
actor's messages one at a time until it is told to stop (spec §4.5, §5.2).

    python -m lightabaco.workers.worker --home DIR --worker-id W --actor TENANT_ID --revision N

Settings come from the LIGHTABACO_* environment the supervisor passes. The process ties itself to
its supervisor before anything else (workers/lineage.py: PR_SET_PDEATHSIG, then a parent check, and
the check again every loop), so a killed server never leaves workers behind; its leased message then
returns to the queue at the next start.
"""

from __future__ import annotations

from lightabaco.workers import lineage

if __name__ == "__main__":  # first, before the slow imports: see lineage.py
    lineage.tie_to_parent()

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lightabaco.config import Settings
from lightabaco.abaco import image_tags, signals
from lightabaco.abaco.doorbell import Doorbell
from lightabaco.abaco.services import Services
from lightabaco.automation.subscriptions import subscribe as subscribe_automation
from lightabaco.sandbox.errors import ImageNotFound
from lightabaco.store import db
from lightabaco.store.db import write_tx
from lightabaco.store.models import Actor, Worker
from lightabaco.workers.notify import DoorbellNotifier, worker_name
from lightabaco.workers.runner import Runner, StartFailure, claim_next

log = logging.getLogger("lightabaco.worker")

EXIT_OK = 0
EXIT_IMAGE = 3  # the actor's image could not be prepared: the actor is in ERROR, do not restart
EXIT_BACKEND = 4  # no usable sandbox backend on this host
EXIT_NEED_PULL = 5  # the image is not in the store: the supervisor pulls it (outside worker slots), then restarts us
MAX_START_FAILURES = 5  # consecutive sandbox start failures before the actor goes to ERROR
HEARTBEAT_S = 10.0
IDLE_WAIT_S = 1.0
STOP_CHECK_S = 0.5


def die_with_parent() -> None:
    """Die with the supervisor; exit at once if it is already gone (see lineage.py)."""
    lineage.tie_to_parent()


def actor_error(services: Services, actor: Actor, revision: int, worker_id: str, message: str) -> None:
    """Put the actor (this revision only) in ERROR with `message`, drop the worker row, emit the event."""
    log.error("actor %s: %s", actor.dbid, message)
    with write_tx():
        Actor.update(status="ERROR", status_message=message).where(
            (Actor.dbid == actor.dbid) & (Actor.revision == revision)).execute()
        Worker.delete().where(Worker.id == worker_id).execute()
    actor.status_message = message
    signals.emit(services, actor, signals.ACTOR_ERROR, status_message=message)


def image_error(services: Services, actor: Actor, revision: int, worker_id: str, exc: BaseException) -> None:
    """The actor's image could not be prepared (the exception's message never holds a registry's body)."""
    actor_error(services, actor, revision, worker_id,
                f"Error pulling image {actor.image} - exception: {exc}. Import it with `lightabaco images "
                "import` or fix the name, then PUT the actor with force=true.")


class WorkerProcess:
    def __init__(self, services: Services, worker_id: str, actor_dbid: str, revision: int) -> None:
        self.services = services
        self.settings = services.settings
        self.worker_id = worker_id
        self.actor_dbid = actor_dbid
        self.revision = revision
        self.stopping = False
        self.keep_row = False
        self.log_dir = self.settings.exec_dir / "logs"

    def set_status(self, status: str, **extra: Any) -> None:
        """Move through the start-up statuses, never over a stop request written meanwhile."""
        Worker.update(status=status, **extra).where(
            (Worker.id == self.worker_id)
            & ~Worker.status.in_(["SHUTDOWN_REQUESTED", "SHUTTING_DOWN"])).execute()

    def should_stop(self) -> bool:
        if self.stopping:
            return True
        row = Worker.select(Worker.status).where(Worker.id == self.worker_id).first()
        if row is None or row.status in ("SHUTDOWN_REQUESTED", "SHUTTING_DOWN"):
            return True
        actor = Actor.select(Actor.revision, Actor.status).where(Actor.dbid == self.actor_dbid).first()
        return actor is None or actor.revision != self.revision or actor.status == "SHUTTING_DOWN"

    def prepare(self) -> Any:
        """Image and backend; on failure the actor goes to ERROR with the reason (spec §5.10)."""
        actor = Actor.get_or_none(Actor.dbid == self.actor_dbid)
        if actor is None:
            return None
        self.set_status("CREATING CONTAINER", pid=os.getpid(), cid=str(os.getpid()),
                        last_health_check_time=time.time())
        # Workers never pull: a pull would hold an execution slot for as long as a registry likes. The
        # supervisor pulls in a separate, bounded pool first (workers/puller.py); an image that went
        # missing since then sends this worker back to it.
        try:
            image = self.services.images.get(actor.image)
        except ImageNotFound:
            log.info("image %s is not in the store; asking the supervisor to pull it", actor.image)
            self.keep_row = True  # the supervisor reads our row to know which actor to restart
            raise SystemExit(EXIT_NEED_PULL)
        except Exception as exc:
            image_error(self.services, actor, self.revision, self.worker_id, exc)
            raise SystemExit(EXIT_IMAGE)
        image_tags.record_digest(self.actor_dbid, self.revision, image.config_digest)
        self.set_status("CREATING CONTAINER")
        try:
            backend = self.services.backend
            probe = getattr(backend, "require_usable", None)
            if probe is not None:
                probe()
        except Exception as exc:
            log.error("no usable sandbox backend: %s", exc)
            self.set_status("ERROR", status_message=str(exc))
            self.keep_row = True  # the supervisor reads the reason from it
            raise SystemExit(EXIT_BACKEND)
        self.set_status("CREATING CONTAINER", location=f"local://{getattr(backend, 'name', 'sandbox')}")
        return image

    def actor_error(self, actor: Actor, message: str) -> None:
        actor_error(self.services, actor, self.revision, self.worker_id, message)

    def become_ready(self) -> None:
        now = time.time()
        with write_tx():
            Worker.update(status="READY", last_health_check_time=now).where(
                (Worker.id == self.worker_id)
                & ~Worker.status.in_(["SHUTDOWN_REQUESTED", "SHUTTING_DOWN"])).execute()
            became = Actor.update(status="READY", status_message=" ").where(
                (Actor.dbid == self.actor_dbid) & (Actor.revision == self.revision)
                & (Actor.status != "READY") & (Actor.status != "SHUTTING_DOWN")).execute()
        if became:
            actor = Actor.get_or_none(Actor.dbid == self.actor_dbid)
            if actor is not None:
                signals.emit(self.services, actor, signals.ACTOR_READY, status_message=" ")

    def run(self) -> int:
        bell = Doorbell(self.settings.home, worker_name(self.worker_id))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            image = self.prepare()
            if image is None:
                return EXIT_OK
            self.become_ready()
            runner = Runner(self.services, self.worker_id, image, bell, self.log_dir)
            failures = 0
            busy = False
            last_beat = last_check = time.monotonic()
            while not self.stopping:
                if not lineage.parent_alive():  # the supervisor is gone: never run on as an orphan
                    log.error("the supervisor is gone; exiting")
                    return EXIT_OK
                rings = bell.drain()
                if b"stop" in rings or runner.stop_requested:
                    break
                # The claim itself refuses work for a stale revision or a deleted actor. The full check
                # (our own row asked to stop, in case a ring was lost) runs every STOP_CHECK_S while
                # busy, and after each quiet second while idle - never on the wake-up path.
                if busy and time.monotonic() - last_check >= STOP_CHECK_S:
                    last_check = time.monotonic()
                    busy = False
                    if self.should_stop():
                        break
                got = claim_next(self.worker_id, self.actor_dbid, self.revision, self.settings.lease_s,
                                 self.log_dir)
                if got is not None:
                    busy = True
                    try:
                        runner.execute(*got)
                        failures = 0
                    except StartFailure as exc:
                        failures += 1
                        if failures > MAX_START_FAILURES:
                            self.actor_error(got[1], f"The sandbox failed to start {failures} times in a "
                                             f"row; last error: {exc}. Check `lightabaco doctor`, then "
                                             "PUT the actor with force=true.")
                            return EXIT_OK
                        time.sleep(min(0.2 * failures, 2.0))
                    continue
                if time.monotonic() - last_beat >= HEARTBEAT_S:
                    last_beat = time.monotonic()
                    Worker.update(last_health_check_time=time.time()).where(
                        Worker.id == self.worker_id).execute()
                rings = bell.wait(IDLE_WAIT_S)
                if b"stop" in rings:
                    break
                if not rings and self.should_stop():  # a quiet second: are we stale or asked to stop?
                    break
            return EXIT_OK
        finally:
            if not self.keep_row:
                Worker.delete().where(Worker.id == self.worker_id).execute()
            bell.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightabaco.workers.worker")
    parser.add_argument("--home", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--actor", required=True, help="actor dbid, {tenant}_{id}")
    parser.add_argument("--revision", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    settings = Settings.from_env(home=Path(args.home))
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s worker {args.worker_id} %(levelname)s %(message)s")
    # SIGTERM = stop after the current execution (the supervisor's warm stop).
    proc: WorkerProcess | None = None

    def on_term(signum: int, frame: Any) -> None:
        if proc is not None:
            proc.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db.connect(settings, create=False)
    services = Services(settings, notifier=DoorbellNotifier(settings.home))
    subscribe_automation()  # this process emits ACTOR_READY/ERROR and EXECUTION_COMPLETE
    proc = WorkerProcess(services, args.worker_id, args.actor, args.revision)
    try:
        return proc.run()
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())
