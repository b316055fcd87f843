"""The Notifier used by a running server: doorbell rings to workers, the supervisor and API processes."""

from __future__ import annotations

from pathlib import Path

from lightabaco.abaco.doorbell import Ringer
from lightabaco.store.models import Worker

SUPERVISOR = "sup"


def worker_name(worker_id: str) -> str:
    return f"w-{worker_id}"


class DoorbellNotifier:
    def __init__(self, home: Path) -> None:
        self.ringer = Ringer(home)

    def wake_actor(self, actor_dbid: str) -> None:
        """Ring the actor's idle workers; busy ones look at the mailbox again when they finish."""
        q = Worker.select(Worker.id).where((Worker.actor_dbid == actor_dbid) & (Worker.status == "READY"))
        for row in q:
            self.ringer.ring(worker_name(row.id), b"m")

    def wake_worker(self, worker_id: str, payload: bytes = b"w") -> None:
        self.ringer.ring(worker_name(worker_id), payload)

    def wake_supervisor(self) -> None:
        self.ringer.ring(SUPERVISOR, b"s")

    def execution_event(self, execution_dbid: str) -> None:
        self.ringer.ring_apis(execution_dbid.encode())
