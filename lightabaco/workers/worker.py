"""A runner process of the shared pool (issue 9): it serves every actor. It claims the oldest message of
any actor with a free worker slot (workers/claims.py), prepares that actor revision's image (a few
are kept ready), runs the execution in a sandbox and records it (runner.py), then claims again.

    python -m lightabaco.workers.worker --home DIR --pool-slot N

Settings come from the LIGHTABACO_* environment the supervisor passes. The process ties itself to
its supervisor before anything else (workers/lineage.py: PR_SET_PDEATHSIG, then a parent check, and
the check again every loop), so a killed server never leaves runners behind; its leased message then
returns to the queue (the supervisor frees the slot, or the lease expires).

Its doorbell is `pool-N` (new messages); while it runs an execution it also listens on the slot's
doorbell `w-<worker id>`, where force-quit rings arrive.
"""

from __future__ import annotations

from lightabaco.workers import lineage

if __name__ == "__main__":  # first, before the slow imports: see lineage.py
    lineage.tie_to_parent()

import argparse
import difflib
import logging
import signal
import sys
import time
from collections import OrderedDict
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
from lightabaco.store import notify as db_notify
from lightabaco.workers import claims
from lightabaco.workers.notify import DoorbellNotifier, pool_name, worker_name
from lightabaco.workers.runner import Runner, StartFailure

log = logging.getLogger("lightabaco.worker")

EXIT_OK = 0
EXIT_IMAGE = 3  # the actor's image could not be prepared: the actor is in ERROR, do not restart
EXIT_BACKEND = 4  # no usable sandbox backend on this host
EXIT_NEED_PULL = 5  # (no longer used: pool processes give back messages whose image is missing)
MAX_START_FAILURES = 5  # consecutive sandbox start failures before the actor goes to ERROR
IDLE_WAIT_S = 1.0


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
    actor_error(services, actor, revision, worker_id, explain_image_error(services, actor.image, exc))


def explain_image_error(services: Any, ref: str, exc: BaseException) -> str:
    """Abaco's words first (clients match on them), then what a user needs: whether the name is in the
    local store at all, the nearest names that are (a typo such as abacosamples/wcc is the common case),
    and how to add the image or re-point the actor, in CLI and REST spelling."""
    text = f"Error pulling image {ref} - exception: {exc}."
    try:
        local = sorted({r["reference"] for r in services.images.list() if r.get("reference")})
    except Exception:  # the advice is a courtesy: never let it hide the real error
        local = []
    if ref not in local:
        near = difflib.get_close_matches(ref, local, n=3, cutoff=0.6)
        text += f" {ref} is not in this server's local image store"
        text += f" (near names there: {', '.join(near)})." if near else "."
    return text + (f" To add it: `lightabaco images pull {ref}`, `lightabaco images import PATH --tag {ref}` or "
                   f"`lightabaco images build DIR --tag {ref}`, then `lightabaco actors update ACTOR --image "
                   f"{ref}` (REST: PUT /actors/ACTOR with image={ref} and force=true). To use another image: "
                   "`lightabaco actors update ACTOR --image NAME`.")


class NoBell:
    """Stands in for a slot's doorbell that could not be bound (another local process still closes it):
    force quit is then seen by the once-a-second database check."""

    def drain(self) -> list[bytes]:
        return []

    def close(self) -> None:
        pass


IMAGE_CACHE = 4  # prepared images kept per process (one per actor revision)
SKIP_S = 30.0  # an actor whose image this host cannot get is left to other hosts for this long


class PoolProcess:
    def __init__(self, services: Services, slot: int) -> None:
        self.services = services
        self.settings = services.settings
        self.slot = slot
        self.host = self.settings.host_id()
        self.stopping = False
        self.log_dir = self.settings.exec_dir / "logs"
        self.images: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self.skip: dict[str, float] = {}  # actor dbid -> monotonic time until which we leave it alone
        self.failures: dict[str, int] = {}  # consecutive sandbox start failures per actor

    def check_backend(self) -> None:
        try:
            probe = getattr(self.services.backend, "require_usable", None)
            if probe is not None:
                probe()
        except Exception as exc:
            log.error("no usable sandbox backend: %s", exc)
            raise SystemExit(EXIT_BACKEND)

    def image_for(self, actor: Actor) -> Any:
        """The prepared image of this actor revision; None when this host does not have it."""
        key = (actor.dbid, actor.revision)
        image = self.images.get(key)
        if image is not None:
            self.images.move_to_end(key)
            return image
        try:
            image = self.services.images.get(actor.image)
        except ImageNotFound:
            image = None
        # A worker host's own copy of a tag can be older than the revision's image (the tag moved on the
        # API server): fetch the revision's image rather than run (and record) the old one.
        stale = image is not None and bool(actor.image_digest) and image.config_digest != actor.image_digest
        if image is None or (stale and self.settings.images_source):
            from lightabaco.workers import imagesource

            image = imagesource.fetch_missing(self.services, actor.image, actor.image_digest)
            if image is None:
                return None
        image_tags.record_digest(actor.dbid, actor.revision, image.config_digest)
        self.images[key] = image
        while len(self.images) > IMAGE_CACHE:
            self.images.popitem(last=False)
        return image

    def skipped(self) -> set[str]:
        now = time.monotonic()
        for dbid in [d for d, until in self.skip.items() if until <= now]:
            del self.skip[dbid]
        return set(self.skip)

    def run_one(self, claimed: Any, actor: Actor, slot_id: str) -> None:
        try:
            image = self.image_for(actor)
        except Exception as exc:  # a broken image: the actor goes to ERROR; its messages wait
            claims.give_back(claimed, actor.dbid, slot_id)
            image_error(self.services, actor, actor.revision, slot_id, exc)
            return
        if image is None:
            log.info("image %s of %s is not on this host; leaving it to others for %.0f s", actor.image,
                     actor.dbid, SKIP_S)
            claims.give_back(claimed, actor.dbid, slot_id)
            self.skip[actor.dbid] = time.monotonic() + SKIP_S
            if not self.settings.images_source:
                # One machine: the supervisor pulls it (outside the pool) and frees the slots again.
                Worker.update(status="REQUESTED").where(
                    (Worker.actor_dbid == actor.dbid) & (Worker.status == "READY")).execute()
                self.services.notifier.wake_supervisor()
            return
        try:
            bell: Any = Doorbell(self.settings.home, worker_name(slot_id))
        except OSError:
            bell = NoBell()
        try:
            runner = Runner(self.services, slot_id, image, bell, self.log_dir)
            runner.execute(claimed, actor)
            self.failures.pop(actor.dbid, None)
        except StartFailure as exc:
            failures = self.failures[actor.dbid] = self.failures.get(actor.dbid, 0) + 1
            if failures > MAX_START_FAILURES:
                self.failures.pop(actor.dbid, None)
                actor_error(self.services, actor, actor.revision, slot_id,
                            f"The sandbox failed to start {failures} times in a row; last error: {exc}. "
                            "Check `lightabaco doctor`, then PUT the actor with force=true.")
            time.sleep(min(0.2 * failures, 2.0))
        finally:
            bell.close()

    def run(self) -> int:
        bell = Doorbell(self.settings.home, pool_name(self.slot))
        bell.wake_on(db_notify.MESSAGES)  # PostgreSQL: messages sent through an API on another host
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.check_backend()
        try:
            while not self.stopping:
                if not lineage.parent_alive():  # the supervisor is gone: never run on as an orphan
                    log.error("the supervisor is gone; exiting")
                    return EXIT_OK
                if b"stop" in bell.drain():
                    break
                got = claims.claim_any(self.host, self.settings.lease_s, self.log_dir, self.skipped())
                if got is not None:
                    self.run_one(*got)
                    continue
                if b"stop" in bell.wait(IDLE_WAIT_S):
                    break
            return EXIT_OK
        finally:
            bell.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightabaco.workers.worker")
    parser.add_argument("--home", required=True)
    parser.add_argument("--pool-slot", type=int, required=True, help="this process's number in the pool")
    args = parser.parse_args(argv)
    die_with_parent()
    settings = Settings.from_env(home=Path(args.home))
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s pool-{args.pool_slot} %(levelname)s %(message)s")
    # SIGTERM = stop after the current execution (the supervisor's warm stop, and the drain).
    proc: PoolProcess | None = None

    def on_term(signum: int, frame: Any) -> None:
        if proc is not None:
            proc.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    db.connect(settings, create=False)
    services = Services(settings, notifier=DoorbellNotifier(settings.home, settings.pool_processes()))
    subscribe_automation()  # this process emits ACTOR_ERROR and EXECUTION_COMPLETE
    proc = PoolProcess(services, args.pool_slot)
    try:
        return proc.run()
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":
    sys.exit(main())
