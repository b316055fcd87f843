"""Actors follow their image tag (issue 9, "tags that move").

An actor names its image by reference (`abacosamples/wc:latest`). When that name in the local store
comes to point to another image (a rebuild with `lightabaco images build`, a re-pull, an import with
the same `--tag`), the actor gets a new revision, exactly as a `PUT` with `force=true` would give it:
the workers of the old revision finish what they run and stop, new ones start on the new image, and
queued messages run on the new image. The actor shows the image ID it runs as `image_digest`.
"""

from __future__ import annotations

import logging
from typing import Any

from lightabaco.store.db import write_tx
from lightabaco.store.models import Actor

log = logging.getLogger(__name__)


def record_digest(actor_dbid: str, revision: int, digest: str) -> None:
    """The image of this revision was prepared: remember which image it is."""
    Actor.update(image_digest=digest).where(
        (Actor.dbid == actor_dbid) & (Actor.revision == revision)
        & ((Actor.image_digest.is_null()) | (Actor.image_digest != digest))).execute()


def follow_moved_tags(services: Any) -> list[str]:
    """Give a new revision to every actor whose tag now points to another image. Returns their dbids."""
    from lightabaco.abaco import workers

    moved = []
    current: dict[str, str | None] = {}
    rows = Actor.select(Actor.dbid, Actor.image, Actor.image_digest, Actor.revision).where(
        Actor.image_digest.is_null(False) & ~Actor.status.in_(["SHUTTING_DOWN", "ERROR"]))
    for row in rows:
        if row.image not in current:
            current[row.image] = services.images.digest_of(row.image)
        now = current[row.image]
        if now is None or now == row.image_digest:
            continue  # gone from the store (the worker pulls it again) or unchanged
        with write_tx():
            n = Actor.update(revision=row.revision + 1, status="SUBMITTED", image_digest=None,
                             status_message=f"The tag {row.image} now points to image {now[:19]}; new "
                             "executions use it.",
                             last_update_time=services.now()).where(
                (Actor.dbid == row.dbid) & (Actor.revision == row.revision)).execute()
        if n:
            fresh = Actor.get_or_none(Actor.dbid == row.dbid)
            if fresh is not None:
                log.info("actor %s: tag %s moved to %s; revision %d", row.dbid, row.image, now,
                         fresh.revision)
                workers.request_worker(services, fresh, stop_existing=True)
                moved.append(row.dbid)
    return moved
