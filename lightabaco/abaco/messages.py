"""Sending messages (spec §2.4, §6): one committed execution + mailbox row per accepted message."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lightabaco import ids
from lightabaco.abaco import actors as actors_mod
from lightabaco.abaco import health, message_env, workers
from lightabaco.protocol.errors import AbacoError, ValidationError
from lightabaco.sharing.identity import Identity
from lightabaco.store import fast, mailbox
from lightabaco.store.db import database, lock_key, write_tx
from lightabaco.store.models import Execution, Message

STR = "str"
JSON = "application/json"
BINARY = "application/octet-stream"
_WORKERS_SQL = 'SELECT "id", "status" FROM "worker" WHERE "actor_dbid" = ?'


@dataclass(frozen=True)
class Sent:
    execution_id: str
    execution_dbid: str
    actor_dbid: str
    result: dict[str, Any]


def encode(payload: Any, content_type: str) -> bytes:
    if content_type == BINARY:
        return bytes(payload)
    if content_type == JSON:
        return json.dumps(payload).encode()
    return str(payload).encode()


def links(services: Any, identity: Identity, actor: Any, execution_id: str) -> dict[str, str]:
    base = actors_mod.base_url(services, identity, actor)
    return {"self": f"{base}/actors/{actor.id}/executions/{execution_id}",
            "owner": f"{base}/profiles/{actor.owner}",
            "messages": f"{base}/actors/{actor.id}/messages"}


def send_message(services: Any, identity: Identity, identifier: str, payload: Any, content_type: str,
                 query: dict[str, str], synchronous: bool = False, executor: str | None = None,
                 extra_env: dict[str, str] | None = None) -> Sent:
    """Commit the execution and the message, then wake a worker. Returns the POST result object."""
    health.refuse_if_draining(services)
    actor = actors_mod.load(services, identity, identifier, "EXECUTE")
    return enqueue_for_actor(services, identity, actor, payload, content_type, query, synchronous,
                             executor, extra_env)


def enqueue_for_actor(services: Any, identity: Identity | None, actor: Any, payload: Any,
                      content_type: str, query: dict[str, str], synchronous: bool = False,
                      executor: str | None = None, extra_env: dict[str, str] | None = None) -> Sent:
    """Enqueue without a permission check (used by the API after its check, by cron and by events)."""
    if synchronous and actor.status == "ERROR":
        # No worker will take it until the actor is fixed: waiting out the sync deadline would only
        # turn the actor's own explanation into a 504. Asynchronous messages still queue, as in Abaco.
        why = (actor.status_message or "").strip() or "no reason was recorded"
        raise ValidationError(f"Actor {actor.id} is in ERROR ({why}), so a synchronous message cannot run. "
                              "Fix the cause and PUT the actor (force=true re-reads its image), then "
                              "send again; an asynchronous message would wait in the queue until then.")
    if synchronous and mailbox.count(actor.dbid) > services.settings.sync_max_queued:
        raise ValidationError("Cannot issue synchronous execution when actor message queue > 0.")
    now = services.now()
    execution_id = ids.new_id()
    execution_dbid = ids.dbid(actor.dbid, execution_id)
    api_server = actors_mod.base_url(services, identity, actor)
    # The sender's variables: refused (400) when they would steer the program's loading or trust.
    env: dict[str, str] = message_env.check(actor, query, services.settings.case)
    sync_flag = query.get("_abaco_synchronous")
    if sync_flag is not None and "\0" not in str(sync_flag):
        env["_abaco_synchronous"] = str(sync_flag)  # a control parameter Abaco also shows the actor
    if identity is not None and executor is None:
        env["_abaco_username"] = identity.username
    env.update(extra_env or {})
    env.update({"_abaco_api_server": api_server, "_abaco_execution_id": execution_id,
                "_abaco_Content_Type": content_type, "_abaco_actor_revision": str(actor.revision)})
    body = encode(payload, content_type)
    need_worker = False
    with write_tx():
        if identity is not None and executor is None:  # inside the write lock: concurrent sends count
            check_queue_cap(services, identity)
        fast.insert(Execution, dbid=execution_dbid, id=execution_id, actor_dbid=actor.dbid,
                    tenant=actor.tenant, api_server=api_server,
                    executor=executor or (identity.username if identity else ""),
                    status="SUBMITTED", message_received_time=now)
        fast.insert(Message, actor_dbid=actor.dbid, execution_id=execution_id, body=body,
                    content_type=content_type, env=env, stateless=actor.stateless, created=now)
        statuses = database.execute_sql(fast.placeholders(_WORKERS_SQL), (actor.dbid,)).fetchall()
        live = [wid for wid, status in statuses if status in workers.LIVE_STATUSES]
        if actor.status not in ("ERROR", "SHUTTING_DOWN") and not live:
            workers._new_row(actor, now)
            need_worker = True
    if need_worker:
        workers.wake(services)
    elif any(status == "READY" for _wid, status in statuses):  # a free slot: ring the pool (busy slots look again when they finish)
        services.notifier.wake_actor(actor.dbid)
    shown = "binary - omitted" if content_type == BINARY else payload
    result = {"execution_id": execution_id, "msg": shown,
              "_links": links(services, identity, actor, execution_id) if identity else {}}
    return Sent(execution_id, execution_dbid, actor.dbid, result)


_UNFINISHED_SQL = ('SELECT COUNT(*) FROM (SELECT 1 FROM "execution" WHERE "tenant" = ? AND "executor" = ? '
                   'AND "status" IN (\'SUBMITTED\', \'RUNNING\') LIMIT ?) AS t')


class QueueFull(AbacoError):
    code = 429


def unfinished_count(tenant: str, username: str, limit: int) -> int:
    """Messages a sender has waiting or running, counted up to `limit` (an indexed range scan)."""
    row = database.execute_sql(fast.placeholders(_UNFINISHED_SQL), (tenant, username, limit)).fetchone()
    return int(row[0]) if row else 0


def check_queue_cap(services: Any, identity: Identity) -> None:
    """429 when the sender already has max_queued_messages_per_user messages not yet finished.

    Counted from the executions table (indexed by tenant, executor, status), so it holds across API
    processes. A message over the cap is never stored; the sender can retry once some have run."""
    cap = services.settings.max_queued_messages_per_user
    if cap <= 0:
        return
    lock_key(f"queue-cap/{identity.tenant}/{identity.username}")  # PostgreSQL: count and insert as one
    if unfinished_count(identity.tenant, identity.username, cap) >= cap:
        raise QueueFull(f"You already have {cap} messages queued or running (the instance's "
                        "max_queued_messages_per_user); this message was not accepted. Wait for some to "
                        "finish (GET /actors/{id}/messages counts an actor's queue) and send it again, or "
                        "purge messages you no longer need (DELETE /actors/{id}/messages).")


def count_messages(services: Any, identity: Identity, identifier: str) -> dict[str, Any]:
    actor = actors_mod.load(services, identity, identifier, "READ")
    base = actors_mod.base_url(services, identity, actor)
    return {"messages": mailbox.count(actor.dbid),
            "_links": {"self": f"{base}/actors/{actor.id}/messages",
                       "owner": f"{base}/profiles/{actor.owner}"}}


def purge_messages(services: Any, identity: Identity, identifier: str) -> dict[str, Any]:
    actor = actors_mod.load(services, identity, identifier, "UPDATE")
    execution_ids = mailbox.purge(actor.dbid)
    if execution_ids:
        # Abaco leaves these SUBMITTED forever; we say what happened to them.
        Execution.update(status="ERROR", status_message="The message was purged from the mailbox "
                         "before it ran.").where(
            (Execution.actor_dbid == actor.dbid) & Execution.id.in_(execution_ids)
            & (Execution.status == "SUBMITTED")).execute()
    base = actors_mod.base_url(services, identity, actor)
    return {"msg": "Actor mailbox purged.",
            "_links": {"self": f"{base}/actors/{actor.id}/messages",
                       "owner": f"{base}/profiles/{actor.owner}"}}
