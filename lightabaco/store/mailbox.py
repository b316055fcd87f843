"""The durable per-actor mailbox: enqueue, claim under a lease, renew, ack, nack, recover, count, purge.

A message row is committed before the client gets its execution id. A worker claims the oldest
unleased message of its actor with one guarded UPDATE ... RETURNING (on PostgreSQL the candidate row is
picked with FOR UPDATE SKIP LOCKED, so concurrent claimers on any host take different messages
without waiting for each other), renews the lease while the
execution runs, and deletes the row (ack) only after the execution is recorded. A lease that is not
renewed expires and the message goes back to the queue (at-least-once delivery). For stateful actors a
message is claimable only while no other message of that actor is leased, which makes processing
strictly FIFO whatever the number of workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from peewee import fn

from lightabaco.store.db import database, is_postgres, write_tx
from lightabaco.store.fast import placeholders
from lightabaco.store.models import JSONField, Message

_json = JSONField()


@dataclass(frozen=True)
class Claimed:
    id: int
    actor_dbid: str
    execution_id: str
    body: bytes
    content_type: str
    env: dict[str, Any]
    attempts: int  # deliveries including this one


def enqueue(actor_dbid: str, execution_id: str, body: bytes, content_type: str,
            env: dict[str, Any], stateless: bool = True, now: float | None = None) -> int:
    """Append one message; the caller commits (normally inside the same transaction as the execution)."""
    return Message.insert(actor_dbid=actor_dbid, execution_id=execution_id, body=body,
                          content_type=content_type, env=env, stateless=stateless,
                          created=time.time() if now is None else now).execute()


_CLAIM_SQL = """
UPDATE message SET lease_owner = ?, lease_until = ?, attempts = attempts + 1
WHERE id = (
  SELECT m.id FROM message m
  WHERE m.actor_dbid = ? AND m.lease_owner IS NULL
    AND (m.stateless OR NOT EXISTS (
          SELECT 1 FROM message x WHERE x.actor_dbid = m.actor_dbid AND x.lease_owner IS NOT NULL))
  ORDER BY m.id LIMIT 1)
RETURNING id, actor_dbid, execution_id, body, content_type, env, attempts
"""


# PostgreSQL: the write transaction holds no database-wide lock, so the guard must lock what it reads.
# SKIP LOCKED lets concurrent claimers of a stateless actor take different rows without waiting. For a
# stateful actor the NOT EXISTS guard alone would let two claimers each see "nothing leased" (neither
# sees the other's uncommitted lease) and break strict FIFO, so its claims first take a transaction
# advisory lock on the actor: the second claimer waits for the first to commit, then sees its lease.
_PG_STATEFUL_LOCK_SQL = """
SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))
WHERE EXISTS (SELECT 1 FROM message WHERE actor_dbid = %s AND NOT stateless)
"""

_PG_CLAIM_SQL = """
UPDATE message SET lease_owner = %s, lease_until = %s, attempts = attempts + 1
WHERE id = (
  SELECT m.id FROM message m
  WHERE m.actor_dbid = %s AND m.lease_owner IS NULL
    AND (m.stateless OR NOT EXISTS (
          SELECT 1 FROM message x WHERE x.actor_dbid = m.actor_dbid AND x.lease_owner IS NOT NULL))
  ORDER BY m.id LIMIT 1
  FOR UPDATE SKIP LOCKED)
RETURNING id, actor_dbid, execution_id, body, content_type, env, attempts
"""


def claim(actor_dbid: str, owner: str, lease_s: float, now: float | None = None) -> Claimed | None:
    """Lease the oldest claimable message of an actor to `owner`. Call inside write_tx()."""
    now = time.time() if now is None else now
    if is_postgres():
        database.execute_sql(_PG_STATEFUL_LOCK_SQL, (actor_dbid, actor_dbid))
        cursor = database.execute_sql(_PG_CLAIM_SQL, (owner, now + lease_s, actor_dbid))
    else:
        cursor = database.execute_sql(placeholders(_CLAIM_SQL), (owner, now + lease_s, actor_dbid))
    row = cursor.fetchone()
    if row is None:
        return None
    return Claimed(id=row[0], actor_dbid=row[1], execution_id=row[2], body=bytes(row[3]),
                   content_type=row[4], env=_json.python_value(row[5]) or {}, attempts=row[6])


def renew(message_id: int, owner: str, lease_s: float, now: float | None = None) -> bool:
    """Extend a lease; False if the lease was lost (expired and taken back, or message purged)."""
    now = time.time() if now is None else now
    n = (Message.update(lease_until=now + lease_s)
         .where((Message.id == message_id) & (Message.lease_owner == owner)).execute())
    return n == 1


def ack(message_id: int) -> None:
    Message.delete().where(Message.id == message_id).execute()


def nack(message_id: int, owner: str, count_attempt: bool = False) -> None:
    """Give a claimed message back to the queue, keeping its place (its id)."""
    changes: dict = {Message.lease_owner: None, Message.lease_until: None}
    if not count_attempt:  # a refusal (stale worker, shutting down) is not a delivery
        changes[Message.attempts] = Message.attempts - 1
    q = Message.update(changes)
    q.where((Message.id == message_id) & (Message.lease_owner == owner)).execute()


def release_expired(now: float | None = None) -> list[tuple[int, str, str, int]]:
    """Return expired leases to the queue. Gives (message id, actor dbid, execution id, attempts)."""
    now = time.time() if now is None else now
    with write_tx():
        rows = list(Message.select(Message.id, Message.actor_dbid, Message.execution_id, Message.attempts)
                    .where(Message.lease_owner.is_null(False) & (Message.lease_until < now)).tuples())
        if rows:
            Message.update(lease_owner=None, lease_until=None).where(
                Message.id.in_([r[0] for r in rows])).execute()
    return rows


def release_owner(owner: str) -> list[tuple[int, str, str, int]]:
    """Return every lease held by one (dead) worker to the queue."""
    with write_tx():
        rows = list(Message.select(Message.id, Message.actor_dbid, Message.execution_id, Message.attempts)
                    .where(Message.lease_owner == owner).tuples())
        if rows:
            Message.update(lease_owner=None, lease_until=None).where(
                Message.id.in_([r[0] for r in rows])).execute()
    return rows


def release_all_except(live_owners: set[str]) -> list[tuple[int, str, str, int]]:
    """Return leases held by anyone not in `live_owners` (at start-up no worker is alive)."""
    with write_tx():
        q = (Message.select(Message.id, Message.actor_dbid, Message.execution_id, Message.attempts,
                            Message.lease_owner)
             .where(Message.lease_owner.is_null(False)).tuples())
        rows = [r[:4] for r in q if r[4] not in live_owners]
        if rows:
            Message.update(lease_owner=None, lease_until=None).where(
                Message.id.in_([r[0] for r in rows])).execute()
    return rows


def count(actor_dbid: str) -> int:
    """Messages waiting (not leased), as Abaco's GET /messages reports."""
    return (Message.select().where((Message.actor_dbid == actor_dbid) & Message.lease_owner.is_null())
            .count())


def count_all() -> dict[str, int]:
    """Waiting messages per actor."""
    q = (Message.select(Message.actor_dbid, fn.COUNT(Message.id)).where(Message.lease_owner.is_null())
         .group_by(Message.actor_dbid).tuples())
    return {a: n for a, n in q}


def purge(actor_dbid: str) -> list[str]:
    """Drop waiting messages of an actor; returns their execution ids."""
    with write_tx():
        ids = [m.execution_id for m in Message.select(Message.execution_id).where(
            (Message.actor_dbid == actor_dbid) & Message.lease_owner.is_null())]
        Message.delete().where((Message.actor_dbid == actor_dbid) & Message.lease_owner.is_null()).execute()
    return ids


def delete_actor(actor_dbid: str) -> None:
    Message.delete().where(Message.actor_dbid == actor_dbid).execute()
