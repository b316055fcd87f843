"""The lifecycle's event registry: what happened to an actor, for whoever reacts to it.

The lifecycle and the worker processes running executions announce events here (`emit`); the layers
above (lightabaco.automation: links and webhooks) subscribe with `on` when a process starts
(`automation.subscriptions.subscribe()`, called by server.py and by each worker process). The lifecycle
never imports its subscribers: this registry is the interface it owns.

Delivery is synchronous and best effort, like Abaco's events: a subscriber that raises is logged and
never breaks the execution or request that emitted the event.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

# Abaco's event types (spec §3.9): the names subscribers receive as `event_type`.
ACTOR_READY = "ACTOR_READY"
ACTOR_ERROR = "ACTOR_ERROR"
EXECUTION_COMPLETE = "EXECUTION_COMPLETE"
EVENT_TYPES = (ACTOR_READY, ACTOR_ERROR, EXECUTION_COMPLETE)

# callback(services, actor, event_type, **data)
Subscriber = Callable[..., None]

_subscribers: dict[str, list[Subscriber]] = {}
_lock = threading.Lock()


def on(event_type: str, callback: Subscriber) -> None:
    """Call `callback(services, actor, event_type, **data)` on every `emit` of that event type.
    Subscribing the same callback twice is a no-op (start-up code may run more than once per process)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; use one of {', '.join(EVENT_TYPES)}")
    with _lock:
        callbacks = _subscribers.setdefault(event_type, [])
        if callback not in callbacks:
            callbacks.append(callback)


def off(event_type: str, callback: Subscriber) -> None:
    """Stop calling `callback` for that event type (tests; nothing in the service unsubscribes)."""
    with _lock:
        if callback in _subscribers.get(event_type, []):
            _subscribers[event_type].remove(callback)


def subscribers(event_type: str) -> list[Subscriber]:
    with _lock:
        return list(_subscribers.get(event_type, []))


def emit(services: Any, actor: Any, event_type: str, **data: Any) -> None:
    """Announce an event of the actor to every subscriber; a failure is logged, never raised."""
    for callback in subscribers(event_type):
        try:
            callback(services, actor, event_type, **data)
        except Exception:  # events are best effort, like Abaco's
            log.exception("event %s for actor %s failed in %s", event_type, getattr(actor, "dbid", actor),
                          getattr(callback, "__qualname__", callback))
