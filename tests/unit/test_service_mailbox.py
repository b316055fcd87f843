"""The durable mailbox: FIFO claims under leases, stateful exclusivity, expiry, ack/nack, purge."""

from __future__ import annotations

from lightabaco.store import mailbox
from lightabaco.store.db import write_tx
from lightabaco.store.models import Message


def put(actor: str, n: int, stateless: bool = True) -> list[str]:
    eids = []
    for i in range(n):
        eid = f"e{i}"
        mailbox.enqueue(actor, eid, f"m{i}".encode(), "str", {"i": str(i)}, stateless, now=100.0 + i)
        eids.append(eid)
    return eids


def claim(actor: str, owner: str, lease_s: float = 30, now: float = 1000.0):
    with write_tx():
        return mailbox.claim(actor, owner, lease_s, now)


def test_claims_are_fifo_and_exclusive(service_env):
    put("DEV_a", 3)
    put("DEV_b", 1)
    first, second = claim("DEV_a", "w1"), claim("DEV_a", "w2")
    assert (first.execution_id, second.execution_id) == ("e0", "e1")
    assert first.body == b"m0" and first.env == {"i": "0"} and first.attempts == 1
    assert mailbox.count("DEV_a") == 1 and mailbox.count("DEV_b") == 1
    assert mailbox.count_all() == {"DEV_a": 1, "DEV_b": 1}
    mailbox.ack(first.id)
    assert Message.select().where(Message.actor_dbid == "DEV_a").count() == 2


def test_stateful_actor_has_one_message_in_flight(service_env):
    put("DEV_s", 3, stateless=False)
    first = claim("DEV_s", "w1")
    assert claim("DEV_s", "w2") is None  # strict FIFO: nothing else while one is leased
    mailbox.nack(first.id, "w1")
    again = claim("DEV_s", "w2")
    assert again.execution_id == "e0" and again.attempts == 1  # a refusal is not a delivery
    mailbox.ack(again.id)
    assert claim("DEV_s", "w1").execution_id == "e1"


def test_expired_lease_returns_to_queue_in_place(service_env):
    put("DEV_a", 2)
    held = claim("DEV_a", "w1", lease_s=5, now=1000.0)
    assert mailbox.renew(held.id, "w1", 5, now=1003.0)
    assert mailbox.release_expired(now=1007.0) == []  # renewed until 1008
    released = mailbox.release_expired(now=1009.0)
    assert released == [(held.id, "DEV_a", "e0", 1)]
    assert not mailbox.renew(held.id, "w1", 5)  # the old holder lost it
    retry = claim("DEV_a", "w2", now=1010.0)
    assert retry.execution_id == "e0" and retry.attempts == 2


def test_release_owner_and_startup_release(service_env):
    put("DEV_a", 3)
    a, b = claim("DEV_a", "w1"), claim("DEV_a", "w2")
    assert [r[2] for r in mailbox.release_owner("w1")] == [a.execution_id]
    assert [r[2] for r in mailbox.release_all_except({"w2"})] == []
    assert [r[2] for r in mailbox.release_all_except(set())] == [b.execution_id]
    assert mailbox.count("DEV_a") == 3


def test_purge_keeps_leased_messages(service_env):
    put("DEV_a", 3)
    held = claim("DEV_a", "w1")
    assert sorted(mailbox.purge("DEV_a")) == ["e1", "e2"]
    assert mailbox.count("DEV_a") == 0
    assert Message.get_by_id(held.id).lease_owner == "w1"
