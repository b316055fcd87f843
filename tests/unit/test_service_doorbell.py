"""Doorbells: rings reach the named receiver of the same home only; API waiters wake on their key."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from lightabaco.abaco.doorbell import Doorbell, ExecutionWaiter, Ringer


def test_ring_reaches_only_the_same_home(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    bell_a, bell_b = Doorbell(a, "w-1"), Doorbell(b, "w-1")
    try:
        assert Ringer(a).ring("w-1", b"stop")
        assert bell_a.wait(1.0) == [b"stop"]
        assert bell_b.wait(0.05) == []
        assert not Ringer(a).ring("w-nobody")  # nobody listening: no error, just False
    finally:
        bell_a.close()
        bell_b.close()


def test_execution_waiter_wakes_on_its_key(tmp_path: Path):
    async def scenario() -> tuple[float, bool]:
        waiter = ExecutionWaiter(tmp_path)
        waiter.start()
        try:
            assert (tmp_path / "run" / "api" / str(os.getpid())).exists()
            loop = asyncio.get_running_loop()
            with waiter.watch("DEV_a_e1") as watch:
                loop.call_later(0.05, lambda: Ringer(tmp_path).ring_apis(b"DEV_a_e1"))
                t0 = loop.time()
                await watch.wait(5.0)
                woke_after = loop.time() - t0
            with waiter.watch("DEV_a_e2") as other:
                Ringer(tmp_path).ring_apis(b"DEV_a_e1")  # not its key
                t1 = loop.time()
                await other.wait(0.2)
                slept = loop.time() - t1 >= 0.19
            return woke_after, slept
        finally:
            waiter.stop()

    woke_after, slept = asyncio.run(scenario())
    assert woke_after < 4.0 and slept  # woken by the ring, long before its 5 s timeout
    assert not (tmp_path / "run" / "api" / str(os.getpid())).exists()
