"""cron.tick with a controllable clock against a real SQLite database."""

from __future__ import annotations

import datetime as dt

from lightabaco.automation import cron
from lightabaco.store.models import Actor, Execution, Message


def at(*parts: int) -> float:
    return dt.datetime(*parts, tzinfo=dt.timezone.utc).timestamp()


def executions(actor):
    return list(Execution.select().where(Execution.actor_dbid == actor.dbid).order_by(Execution.seq))


def next_ex(actor) -> str:
    return Actor.get(Actor.dbid == actor.dbid).cron_next_ex


def test_fires_on_time_with_abacos_message(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner, cron_schedule="2026-11-28 05 + 1 hour",
                                   cron_next_ex="2026-11-28 05", cron_on=True, status="READY")
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 4, 59)) == 0
    assert executions(actor) == []
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 5, 0, 10)) == 1
    [ex] = executions(actor)
    assert ex.executor == "cron" and ex.status == "SUBMITTED"
    msg = Message.get(Message.execution_id == ex.id)
    assert bytes(msg.body) == b"This is your cron execution"
    assert msg.content_type == "str"
    assert "_abaco_username" not in msg.env and "Time_msg_queued" in msg.env
    assert next_ex(actor) == "2026-11-28 6"
    # a second pass in the same hour does nothing
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 5, 50)) == 0
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 6, 0, 5)) == 1
    assert next_ex(actor) == "2026-11-28 7"


def test_missed_runs_are_caught_up_once_without_drift(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner, cron_schedule="2026-11-27 01 + 6 hours",
                                   cron_next_ex="2026-11-27 01", cron_on=True)
    # the server was down for a day and a bit: 5 slots were missed
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 4, 30)) == 1
    assert len(executions(actor)) == 1
    assert next_ex(actor) == "2026-11-28 7"  # still on the 1/7/13/19 grid
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 5, 30)) == 0
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 7, 0, 1)) == 1
    assert next_ex(actor) == "2026-11-28 13"


def test_cron_off_advances_without_executing(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner, cron_schedule="2026-11-28 05 + 1 day",
                                   cron_next_ex="2026-11-28 05", cron_on=False)
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 5, 1)) == 0
    assert executions(actor) == []
    assert next_ex(actor) == "2026-11-29 5"


def test_five_field_schedule_fires_by_the_minute(sharing_env):
    actor = sharing_env.make_actor(sharing_env.owner, cron_schedule="*/15 * * * *",
                                   cron_next_ex="2026-11-28 04:45", cron_on=True)
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 4, 44, 59)) == 0
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 4, 45, 3)) == 1
    assert next_ex(actor) == "2026-11-28 05:00"


def test_unusable_schedule_does_not_stop_others(sharing_env):
    sharing_env.make_actor(sharing_env.owner, cron_schedule="broken", cron_next_ex="2026-11-28 05", cron_on=True)
    good = sharing_env.make_actor(sharing_env.owner, cron_schedule="now + 1 hour", cron_next_ex="2026-11-28 05",
                                  cron_on=True)
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 5, 2)) == 1
    assert len(executions(good)) == 1


def test_only_one_of_two_racing_ticks_fires(sharing_env):
    """The slot is claimed with a conditional UPDATE: a stale second ticker sees it taken."""
    actor = sharing_env.make_actor(sharing_env.owner, cron_schedule="now + 1 hour", cron_next_ex="2026-11-28 05",
                                   cron_on=True)
    stale = list(cron.due_actors(dt.datetime(2026, 11, 28, 5, 1)))
    assert cron.tick(sharing_env.services, at(2026, 11, 28, 5, 1)) == 1
    original = cron.due_actors
    cron.due_actors = lambda now: stale  # the second ticker read the rows before the first one wrote
    try:
        assert cron.tick(sharing_env.services, at(2026, 11, 28, 5, 1)) == 0
    finally:
        cron.due_actors = original
    assert len(executions(actor)) == 1
