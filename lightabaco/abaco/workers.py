"""Worker records (spec §2.6, §3.4, §5.3): requesting workers and waking the supervisor.
(Listing, adding and stopping them through the API: workers_api.py, which looks actors up.)

A worker is one OS process bound to one actor revision. The API only writes the desired state here
(a REQUESTED row, or SHUTDOWN_REQUESTED) and rings the supervisor, which starts and stops processes.
"""

from __future__ import annotations

import socket
from typing import Any

from lightabaco import ids
from lightabaco.protocol.serialize import display_time
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
        "host_ip": row.host_ip, "host": row.host_id, "create_time": display_time(row.create_time),
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
