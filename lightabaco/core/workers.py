"""Worker records (spec §2.6, §3.4, §5.3): requesting, listing, adding and stopping workers.

A worker is one OS process bound to one actor revision. The API only writes the desired state here
(a REQUESTED row, or SHUTDOWN_REQUESTED) and rings the supervisor, which starts and stops processes.
"""

from __future__ import annotations

import socket
from typing import Any

from lightabaco import ids
from lightabaco.core import actors as actors_mod
from lightabaco.core.errors import NotFound, PermissionDenied, ValidationError
from lightabaco.core.identity import Identity
from lightabaco.core.serialize import display_time
from lightabaco.store.db import write_tx
from lightabaco.store.models import Actor, Worker

LIVE_STATUSES = ("REQUESTED", "SPAWNER SETUP", "PULLING IMAGE", "CREATING CONTAINER", "UPDATING STORE",
                 "READY", "BUSY")
STOPPING_STATUSES = ("SHUTDOWN_REQUESTED", "SHUTTING_DOWN")


def wake(services: Any) -> None:
    services.notifier.wake_supervisor()


def display(row: Worker) -> dict[str, Any]:
    return {
        "id": row.id, "tenant": row.tenant, "status": row.status, "image": row.image,
        "location": row.location, "cid": row.cid, "ch_name": row.ch_name, "host_id": row.host_id,
        "host_ip": row.host_ip, "create_time": display_time(row.create_time),
        "last_execution_time": display_time(row.last_execution_time),
        "last_health_check_time": display_time(row.last_health_check_time),
    }


def _new_row(actor: Actor, now: float) -> Worker:
    wid = ids.new_id()
    return Worker.create(dbid=ids.dbid(actor.dbid, wid), id=wid, actor_dbid=actor.dbid,
                         tenant=actor.tenant, status="REQUESTED", image=actor.image,
                         revision=actor.revision, create_time=now, ch_name=f"worker_{wid}",
                         host_id=socket.gethostname())


def live_count(actor_dbid: str) -> int:
    return Worker.select().where((Worker.actor_dbid == actor_dbid)
                                 & Worker.status.in_(LIVE_STATUSES)).count()


def ensure_one_worker(services: Any, actor: Actor) -> bool:
    """Request a worker when the actor has none (on registration and on every message)."""
    if actor.status in ("ERROR", "SHUTTING_DOWN"):
        return False
    with write_tx():
        if live_count(actor.dbid) > 0:
            return False
        _new_row(actor, services.now())
    wake(services)
    return True


def request_worker(services: Any, actor: Actor, stop_existing: bool = False) -> Worker:
    """Request one more worker; with stop_existing the actor's other workers are told to stop."""
    with write_tx():
        row = _new_row(actor, services.now())
        others: list[str] = []
        if stop_existing:
            q = Worker.select(Worker.id).where((Worker.actor_dbid == actor.dbid) & (Worker.id != row.id))
            others = [w.id for w in q]
            Worker.update(status="SHUTDOWN_REQUESTED").where(
                (Worker.actor_dbid == actor.dbid) & (Worker.id != row.id)
                & ~Worker.status.in_(STOPPING_STATUSES)).execute()
    for wid in others:
        services.notifier.wake_worker(wid, b"stop")
    wake(services)
    return row


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
