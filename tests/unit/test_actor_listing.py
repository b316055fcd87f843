"""`GET /actors` (actors.list_actors): a constant number of queries whatever the number of actors, and
the same bytes as describing each actor on its own (the way the listing was built before)."""

from __future__ import annotations

import json
import logging

from lightabaco.abaco import actors, state
from lightabaco.abaco import workers as worker_records
from lightabaco.sharing import aliases, permissions
from lightabaco.store.models import Actor, Worker


def _old_listing(services, identity):
    """The listing as it was: a model per row, `display` per actor."""
    visible = permissions.visible_actor_dbids(services, identity)
    q = Actor.select().where(Actor.tenant == identity.tenant).order_by(Actor.seq, Actor.create_time)
    return [actors.display(services, identity, row) for row in q if visible is None or row.dbid in visible]


def _dump(obj) -> bytes:  # as the HTTP envelope serializes it
    return json.dumps(obj, separators=(",", ":"), default=str).encode()


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


def _queries(fn) -> int:
    counter, lg = _Count(), logging.getLogger("peewee")
    old_level, old_prop = lg.level, lg.propagate
    lg.addHandler(counter)
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    try:
        fn()
    finally:
        lg.removeHandler(counter)
        lg.setLevel(old_level)
        lg.propagate = old_prop
    return counter.n


def _varied_actors(env):
    s, bob, alice = env.services, env.user("bob"), env.user("alice")
    a = actors.create_actor(s, bob, {"image": "me/a:1", "name": "plain"})
    b = actors.create_actor(s, bob, {"image": "me/b", "stateless": False, "description": "ünïcode \"q\"",
                                     "default_environment": {"K": "v", "E": ""}, "hints": ["x", 3],
                                     "cron_schedule": "2030-01-01 00 + 1 hour", "max_run_time": 2.5,
                                     "message_env_allow": ["PYTHONPATH"]})
    c = actors.create_actor(s, bob, {"image": "me/c", "name": None, "link": a["id"], "log_ex": 60})
    d = actors.create_actor(s, alice, {"image": "me/d", "name": "alices"})
    state.set_state(s, bob, b["id"], {"count": 7, "nested": [1, {"k": None}]})
    # workers: two slots, one of them BUSY
    a_row = Actor.get(Actor.id == a["id"])
    worker_records.request_worker(s, a_row)
    Worker.update(status="READY").where(Worker.actor_dbid == a_row.dbid).execute()
    busy = Worker.select().where(Worker.actor_dbid == a_row.dbid).first()
    Worker.update(status="BUSY").where(Worker.dbid == busy.dbid).execute()
    Actor.update(image_digest="sha256:" + "a" * 64, status="READY").where(Actor.dbid == a_row.dbid).execute()
    # aliases and shares
    aliases.create_alias(s, bob, {"alias": "first", "actor_id": a["id"]})
    permissions.set_permission(permissions.ACTOR, Actor.get(Actor.id == c["id"]).dbid, "alice", "READ")
    permissions.set_permission(permissions.ACTOR, Actor.get(Actor.id == a["id"]).dbid, permissions.WORLD, "EXECUTE")
    permissions.set_permission(permissions.ACTOR, Actor.get(Actor.id == d["id"]).dbid, "bob", "NONE")
    return [a, b, c, d]


def test_listing_bytes_equal_the_per_actor_descriptions(service_env) -> None:
    made = _varied_actors(service_env)
    s = service_env.services
    for who in (service_env.user("bob"), service_env.user("alice"), service_env.user("carol"), service_env.admin()):
        new = actors.list_actors(s, who)
        assert _dump(new) == _dump(_old_listing(s, who)), who.username
        for item in new:  # and each equals GET /actors/{id} for that actor
            assert _dump(item) == _dump(actors.display(s, who, Actor.get(Actor.id == item["id"])))
    assert [x["id"] for x in actors.list_actors(s, service_env.user("alice"))] == \
        [made[0]["id"], made[2]["id"], made[3]["id"]], "own, shared and world-readable actors, in creation order"
    assert len(actors.list_actors(s, service_env.user("carol"))) == 1, "only the ABACO_WORLD share"


def test_listing_costs_a_constant_number_of_queries(service_env) -> None:
    s, bob = service_env.services, service_env.user("bob")
    _varied_actors(service_env)
    few = _queries(lambda: actors.list_actors(s, bob))
    for i in range(30):
        actors.create_actor(s, bob, {"image": "me/x", "name": f"more{i}"})
    many = _queries(lambda: actors.list_actors(s, bob))
    assert few == many <= 3, (few, many)
