"""The workers of one actor through the API (spec §2.6, §3.4): list, get, add (admins), stop (admins).

Apart from workers.py (the records and wake-ups) because these look the actor up (actors.load), and
actors.py itself requests workers: one module each way would be an import cycle.
"""

from __future__ import annotations

from typing import Any

from lightabaco.abaco import actors as actors_mod
from lightabaco.abaco.workers import STOPPING_STATUSES, display, request_worker, wake
from lightabaco.protocol.errors import NotFound, PermissionDenied, ValidationError
from lightabaco.sharing.identity import Identity
from lightabaco.store.models import Worker


def list_workers(services: Any, identity: Identity, identifier: str) -> list[dict[str, Any]]:
    actor = actors_mod.load(services, identity, identifier, "READ")
    q = Worker.select().where(Worker.actor_dbid == actor.dbid).order_by(Worker.create_time)
    return [display(w) for w in q]


def get_worker(services: Any, identity: Identity, identifier: str, worker_id: str) -> dict[str, Any]:
    actor = actors_mod.load(services, identity, identifier, "READ")
    row = Worker.get_or_none((Worker.actor_dbid == actor.dbid) & (Worker.id == worker_id))
    if row is None:
        raise NotFound("Worker not found.")
    return display(row)


def _require_admin(identity: Identity) -> None:
    if not identity.is_admin:
        raise PermissionDenied("Not authorized -- only admins are authorized to update workers.")


def add_workers(services: Any, identity: Identity, identifier: str, num: Any) -> str:
    """POST /workers: make sure the actor has at least `num` workers. Returns the envelope message."""
    _require_admin(identity)
    actor = actors_mod.load(services, identity, identifier, "UPDATE")
    try:
        wanted = int(num) if num not in (None, "") else 1
    except (TypeError, ValueError):
        raise ValidationError("Invalid worker description: {'num': 'Number of workers to start "
                              "(default 1).'}") from None
    wanted = max(wanted, 1)
    if actor.status == "ERROR":
        raise ValidationError(f"Actor {actor.id} is in ERROR status ({actor.status_message}); fix it "
                              "with a PUT (force=true) before adding workers.")
    current = Worker.select().where((Worker.actor_dbid == actor.dbid)
                                    & ~Worker.status.in_(STOPPING_STATUSES)).count()
    if current >= wanted:
        return f"Actor {actor.id} already had {wanted} worker(s)."
    for _ in range(wanted - current):
        request_worker(services, actor)
    return f"Scheduled {wanted - current} new worker(s) to start. Previously, there were {current} workers."


def delete_worker(services: Any, identity: Identity, identifier: str, worker_id: str) -> None:
    _require_admin(identity)
    actor = actors_mod.load(services, identity, identifier, "UPDATE")
    row = Worker.get_or_none((Worker.actor_dbid == actor.dbid) & (Worker.id == worker_id))
    if row is None:
        raise NotFound("Worker not found.")
    Worker.update(status="SHUTDOWN_REQUESTED").where(Worker.dbid == row.dbid).execute()
    services.notifier.wake_worker(row.id, b"stop")
    wake(services)
