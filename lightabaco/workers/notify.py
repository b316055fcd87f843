"""The Notifier used by a running server: doorbell rings to the pool, the supervisor and API processes."""

from __future__ import annotations

from pathlib import Path

from lightabaco.abaco.doorbell import Ringer

SUPERVISOR = "sup"


def worker_name(worker_id: str) -> str:
    """A worker slot's doorbell, listened to by the pool process running an execution in that slot
    (force quit, stop)."""
    return f"w-{worker_id}"


def pool_name(slot: int) -> str:
    """The doorbell of pool process number `slot`."""
    return f"pool-{slot}"


class DoorbellNotifier:
    def __init__(self, home: Path, pool: int = 0) -> None:
        self.ringer = Ringer(home)
        self.pool = pool  # runner processes of this host's pool (0: ring the supervisor instead)

    def wake_actor(self, actor_dbid: str) -> None:
        """A message arrived: ring the pool (any free process may take it; busy ones look at the
        mailbox again when they finish). Other hosts hear of it through the database (PostgreSQL)."""
        for slot in range(self.pool):
            self.ringer.ring(pool_name(slot), b"m")

    def wake_worker(self, worker_id: str, payload: bytes = b"w") -> None:
        """A control ring (stop, kill) for the pool process running in that slot; new messages ring the
        pool with `wake_actor`."""
        self.ringer.ring(worker_name(worker_id), payload)

    def wake_supervisor(self) -> None:
        self.ringer.ring(SUPERVISOR, b"s")

    def execution_event(self, execution_dbid: str) -> None:
        self.ringer.ring_apis(execution_dbid.encode())
