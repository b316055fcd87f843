"""Cron ticks: fire the actors whose cron slot is due (spec §7).

`tick(services, now)` is called by the server's ticker (every ~10 s) with an injectable clock. For each
due actor it claims the slot with a conditional UPDATE (so two tickers never both fire), sends
"This is your cron execution" once if `cron_on`, and moves `cron_next_ex` to the first slot on the
original cadence that lies after now (lightabaco.abaco.schedule: the grammar the lifecycle validates with).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from lightabaco.abaco.schedule import (CRON_MESSAGE, _hour, _utc, format_minute, format_next, next_after_due,
                                       parse_next_ex)
from lightabaco.protocol.errors import AbacoError

log = logging.getLogger(__name__)


def due_actors(now: dt.datetime) -> list[Any]:
    from lightabaco.store.models import Actor

    return list(Actor.select().where(Actor.cron_schedule.is_null(False) & Actor.cron_next_ex.is_null(False)
                                     & (Actor.status != "SHUTTING_DOWN")))


def tick(services: Any, now: float | dt.datetime) -> int:
    """Fire every due cron actor once; return how many executions were created."""
    from lightabaco.store.models import Actor

    current = _utc(now)
    fired = 0
    _resume_webhooks(services)
    for actor in due_actors(current):
        parsed = parse_next_ex(actor.cron_next_ex)
        if parsed is None:
            continue
        due, by_minute = parsed
        if due > (current if by_minute else _hour(current)):
            continue
        try:
            new_next = next_after_due(actor.cron_schedule, due, current)
        except AbacoError as exc:
            log.warning("actor %s has an unusable cron schedule %r: %s", actor.dbid, actor.cron_schedule,
                        exc.message)
            continue
        text = format_minute(new_next) if by_minute else format_next(new_next)
        # Claim this slot: only the ticker whose UPDATE changes the row fires it.
        claimed = (Actor.update(cron_next_ex=text)
                   .where((Actor.dbid == actor.dbid) & (Actor.cron_next_ex == actor.cron_next_ex)).execute())
        if not claimed or not actor.cron_on:
            continue
        try:
            send_cron_message(services, actor)
            fired += 1
        except Exception:  # one broken actor must not stop the others' schedules
            log.exception("cron execution for actor %s could not be queued", actor.dbid)
    return fired


def _resume_webhooks(services: Any) -> None:
    """The ticker runs in the server process: make sure webhooks left pending (by a restart, or by a
    worker process that died) have a delivery thread here."""
    try:
        from lightabaco.automation import events

        events.resume_pending(services)
    except Exception:  # webhooks must never stop cron
        log.exception("could not resume pending webhook deliveries")


def send_cron_message(services: Any, actor: Any) -> str:
    """Queue Abaco's static cron message as executor "cron"; returns the execution id."""
    import time as _time

    from lightabaco.abaco import messages

    env = {"Time_msg_queued": str(_time.time())}
    sent = messages.enqueue_for_actor(services, None, actor, CRON_MESSAGE, messages.STR, {}, executor="cron",
                                      extra_env=env)
    return sent.execution_id
