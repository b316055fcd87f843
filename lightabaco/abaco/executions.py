"""Executions (spec §2.5, §3.2): summaries, details, logs, results, force quit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightabaco import ids
from lightabaco.abaco import actors as actors_mod
from lightabaco.abaco import result_quota
from lightabaco.protocol.errors import NotFound, ValidationError
from lightabaco.sharing.identity import Identity
from lightabaco.protocol.serialize import display_time_or_null

from lightabaco.store import fast
from lightabaco.store.db import database
from lightabaco.store.fast import placeholders
from lightabaco.store.models import Actor, Execution, Log

TERMINAL = ("COMPLETE", "ERROR")


def _links(base: str, actor: Actor, row: Execution) -> dict[str, str]:
    return {"self": f"{base}/actors/{actor.id}/executions/{row.id}",
            "owner": f"{base}/profiles/{row.executor or actor.owner}",
            "logs": f"{base}/actors/{actor.id}/executions/{row.id}/logs"}


def display(services: Any, identity: Identity | None, actor: Actor, row: Execution) -> dict[str, Any]:
    base = actors_mod.base_url(services, identity, actor)
    out = {
        "id": row.id, "actor_id": actor.id, "api_server": row.api_server, "executor": row.executor,
        "worker_id": row.worker_id, "status": row.status,
        "message_received_time": display_time_or_null(row.message_received_time),
        "start_time": display_time_or_null(row.start_time),
        "finish_time": display_time_or_null(row.finish_time),
        "runtime": row.runtime, "cpu": row.cpu, "io": row.io, "exit_code": row.exit_code,
        "final_state": row.final_state, "_links": _links(base, actor, row),
        "host": row.host,  # lightabaco: which host's pool ran it (worker hosts, issue 12)
    }
    if row.status_message:
        out["status_message"] = row.status_message
    return out


def find(actor: Actor, execution_id: str) -> Execution:
    row = Execution.get_or_none(Execution.dbid == ids.dbid(actor.dbid, execution_id))
    if row is None:
        raise NotFound(f"No executions found with actor id of {actor.id} and execution id of "
                       f"{execution_id}.")
    return row


def summary(services: Any, identity: Identity, identifier: str) -> dict[str, Any]:
    actor = actors_mod.load(services, identity, identifier, "READ")
    base = actors_mod.base_url(services, identity, actor)
    items = []
    totals = {"cpu": 0, "io": 0, "runtime": 0}
    q = (Execution.select(Execution.id, Execution.status, Execution.start_time, Execution.finish_time,
                          Execution.message_received_time, Execution.cpu, Execution.io,
                          Execution.runtime)
         .where(Execution.actor_dbid == actor.dbid).order_by(Execution.seq))
    for row in q:
        items.append({"id": row.id, "status": row.status,
                      "start_time": display_time_or_null(row.start_time),
                      "finish_time": display_time_or_null(row.finish_time),
                      "message_received_time": display_time_or_null(row.message_received_time)})
        totals["cpu"] += int(row.cpu or 0)
        totals["io"] += int(row.io or 0)
        totals["runtime"] += int(row.runtime or 0)
    return {"actor_id": actor.id, "api_server": actor.api_server, "owner": actor.owner,
            "total_executions": len(items), "total_cpu": totals["cpu"], "total_io": totals["io"],
            "total_runtime": totals["runtime"], "executions": items,
            "_links": {"self": f"{base}/actors/{actor.id}/executions",
                       "owner": f"{base}/profiles/{actor.owner}"}}


def get_execution(services: Any, identity: Identity, identifier: str, execution_id: str) -> dict:
    actor = actors_mod.load(services, identity, identifier, "READ")
    return display(services, identity, actor, find(actor, execution_id))


def read_live_log(path: str | None, limit: int) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


def logs_text(services: Any, row: Execution) -> str:
    log = fast.get_one(Log, "execution_dbid", row.dbid)
    if log is not None:
        if log.expires is not None and log.expires < services.now():
            return ""
        return log.text
    if row.status == "RUNNING":
        return read_live_log(row.live_log_path, services.settings.max_log_bytes)
    return ""


def get_logs(services: Any, identity: Identity, identifier: str, execution_id: str) -> dict[str, Any]:
    actor = actors_mod.load(services, identity, identifier, "READ")
    row = find(actor, execution_id)
    base = actors_mod.base_url(services, identity, actor)
    return {"logs": logs_text(services, row),
            "_links": {"self": f"{base}/actors/{actor.id}/executions/{row.id}/logs",
                       "owner": f"{base}/profiles/{actor.owner}",
                       "execution": f"{base}/actors/{actor.id}/executions/{row.id}"}}


_FIRST_RESULT_SQL = ('SELECT "id", "data" FROM "result" WHERE "execution_dbid" = ? AND "created" >= ? '
                     'ORDER BY "id" LIMIT 1')
_DELETE_RESULT_SQL = 'DELETE FROM "result" WHERE "id" = ?'
_STATUS_SQL = 'SELECT "status" FROM "execution" WHERE "dbid" = ?'


def pop_result(services: Any, execution_dbid: str) -> bytes | None:
    """Remove and return the oldest unexpired result of an execution; None when there is none."""
    oldest_allowed = services.now() - services.settings.results_ttl_s
    while True:
        # Read first (no write lock): a synchronous request asks often and usually finds nothing.
        row = database.execute_sql(placeholders(_FIRST_RESULT_SQL),
                                   (execution_dbid, oldest_allowed)).fetchone()
        if row is None:
            return None
        if database.execute_sql(placeholders(_DELETE_RESULT_SQL), (row[0],)).rowcount:
            data = bytes(row[1])
            result_quota.release(execution_dbid, len(data))  # the owner's quota gets the room back
            return data
        # Another reader popped it first: take the next one.


def get_result(services: Any, identity: Identity, identifier: str, execution_id: str) -> bytes:
    actor = actors_mod.load(services, identity, identifier, "READ")
    row = find(actor, execution_id)
    return pop_result(services, row.dbid) or b""


def force_quit(services: Any, identity: Identity, identifier: str, execution_id: str) -> str:
    actor = actors_mod.load(services, identity, identifier, "UPDATE")
    row = find(actor, execution_id)
    n = Execution.update(force_quit=True).where(
        (Execution.dbid == row.dbid) & (Execution.status == "RUNNING")).execute()
    if n == 0:
        status = Execution.get_by_id(row.seq).status
        raise ValidationError("Cannot force quit an execution not in RUNNING status. Execution was found "
                              f"in status: {status}")
    if row.worker_id:
        services.notifier.wake_worker(row.worker_id, b"kill")
    return f"Issued force quit command for execution {execution_id}."


def status_of(execution_dbid: str) -> str | None:
    row = database.execute_sql(placeholders(_STATUS_SQL), (execution_dbid,)).fetchone()
    return row[0] if row else None


def live_log_path(execution_dbid: str) -> Path | None:
    row = Execution.select(Execution.live_log_path).where(Execution.dbid == execution_dbid).first()
    return Path(row.live_log_path) if row and row.live_log_path else None


def error_reason(execution_dbid: str) -> str:
    row = Execution.get_or_none(Execution.dbid == execution_dbid)
    return (row.status_message if row else "") or "the platform could not run it."


def final_logs(services: Any, execution_dbid: str) -> str:
    row = fast.get_one(Execution, "dbid", execution_dbid)
    return logs_text(services, row) if row else ""
