"""tapipy, unmodified, drives a live lightabaco server: it loads its OpenAPI spec from its own package
(no download), and `tenant_id` is passed so that it never asks a Tenants API for the tenant."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tapis(multiuser_server):
    from tapipy.tapis import Tapis

    def client(who: str) -> Tapis:
        return Tapis(base_url=multiuser_server.url, tenant_id="DEV", access_token=multiuser_server.tokens[who],
                     download_latest_specs=False)
    return client


def test_tapipy_register_send_read(tapis):
    t = tapis("regular")
    actor = t.actors.create_actor(image="abacosamples/test", description="via tapipy", stateless=False)
    assert actor.owner == "regular" and actor.description == "via tapipy" and actor.stateless is False
    sent = t.actors.send_message(actor_id=actor.id, message="hello from tapipy")
    execution_id = sent.execution_id
    deadline = time.monotonic() + 30
    while True:
        ex = t.actors.get_execution(actor_id=actor.id, execution_id=execution_id)
        if ex.status == "COMPLETE":
            break
        assert time.monotonic() < deadline, f"execution still {ex.status}"
        time.sleep(0.1)
    assert ex.executor == "regular" and ex.worker_id
    logs = t.actors.get_execution_logs(actor_id=actor.id, execution_id=execution_id)
    assert "Contents of MSG: hello from tapipy" in logs.logs
    assert [a.id for a in t.actors.list_actors()] == [actor.id]


def test_tapipy_sharing_calls(tapis):
    from tapipy.errors import BadRequestError

    owner, reader = tapis("priv"), tapis("limited")
    actor = owner.actors.create_actor(image="abacosamples/test")
    with pytest.raises(BadRequestError, match="you do not have access to this actor"):
        reader.actors.get_actor(actor_id=actor.id)
    perms = owner.actors.update_permissions(actor_id=actor.id, user="limited", level="READ")
    assert perms.limited == "READ"
    assert reader.actors.get_actor(actor_id=actor.id).id == actor.id
    nonce = owner.actors.create_nonce(actor_id=actor.id, level="READ", max_uses=2)
    assert nonce.max_uses == 2 and nonce.remaining_uses == 2
    alias = owner.actors.create_alias(alias="priv_echo", actor_id=actor.id)
    assert alias.actor_id == actor.id
    assert owner.actors.get_actor(actor_id="priv_echo").id == actor.id
