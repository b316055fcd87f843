"""Connect automation to the lifecycle's events: links and webhooks hear ACTOR_READY, ACTOR_ERROR and
EXECUTION_COMPLETE. Called once per process that emits or delivers them: the server (server.py) and
every worker process (workers/worker.py). Idempotent."""

from __future__ import annotations

from lightabaco.abaco import signals
from lightabaco.automation import events


def subscribe() -> None:
    for event_type in signals.EVENT_TYPES:
        signals.on(event_type, events.emit)
