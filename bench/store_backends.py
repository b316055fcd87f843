"""Enqueue and execution rates of one lightabaco server on SQLite vs PostgreSQL, in one run.

    python bench/store_backends.py [--messages 200] [--senders 4] [--workers 2]

For each database it starts a real server (as the e2e tests do: uvicorn, the worker pool, bubblewrap
sandboxes, busybox test images), registers one stateless actor with `--workers` workers, then

- enqueue: `--senders` threads POST `--messages` messages as fast as the API accepts them (each POST
  returns after the message and its execution are committed) → accepted messages per second;
- execution: from the first POST until every execution is COMPLETE → executions per second.

PostgreSQL is an initdb cluster in a temporary directory (tests/fixtures/postgres.py; Debian's
`postgresql` package), with fsync off like the tests' — so the PostgreSQL row measures the code path, not
a durable disk; SQLite runs as configured for production (WAL, synchronous=NORMAL). Not run in CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.postgres import postgres_missing, start_cluster  # noqa: E402
from tests.fixtures.server import LiveServer, free_port, import_test_images, make_home  # noqa: E402


def measure(settings: dict, messages: int, senders: int, workers: int, layouts: Path) -> dict[str, float]:
    home = make_home("lab-bench-")
    import_test_images(home, layouts)
    server = LiveServer(home=home, port=free_port(),
                        settings={**settings, "workers": workers, "log_level": "warning"})
    server.start(timeout=60)
    try:
        aid = server.register("abacosamples/test", max_workers=workers)["id"]
        eids: list[str] = []
        lock = threading.Lock()
        per_sender = messages // senders

        def send() -> None:
            for _ in range(per_sender):
                eid = server.send(aid, "bench")
                with lock:
                    eids.append(eid)

        t0 = time.monotonic()
        threads = [threading.Thread(target=send) for _ in range(senders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        enqueue_s = time.monotonic() - t0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            r = server.get(f"/actors/{aid}/executions").json()["result"]
            done = sum(1 for e in r["executions"] if e["status"] in ("COMPLETE", "ERROR"))
            if done >= len(eids):
                break
            time.sleep(0.2)
        total_s = time.monotonic() - t0
        return {"messages": len(eids), "enqueue_per_s": len(eids) / enqueue_s, "exec_per_s": len(eids) / total_s,
                "total_s": total_s}
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    layouts = Path(tempfile.mkdtemp(prefix="lab-bench-layouts-"))
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        rows.append(("sqlite", measure({}, args.messages, args.senders, args.workers, layouts)))
        reason = postgres_missing()
        if reason:
            print(f"PostgreSQL skipped: {reason}")
        else:
            cluster = start_cluster()
            try:
                rows.append(("postgresql", measure({"database_url": cluster.create_database("bench")},
                                                   args.messages, args.senders, args.workers, layouts)))
            finally:
                cluster.stop()
                shutil.rmtree(cluster.root, ignore_errors=True)
    finally:
        shutil.rmtree(layouts, ignore_errors=True)
    load = os.getloadavg()
    print(f"{args.messages} messages, {args.senders} senders, {args.workers} workers, "
          f"{os.cpu_count()} cores, load {load[0]:.1f}")
    print(f"{'database':<12}{'enqueue msg/s':>15}{'exec/s':>10}{'total s':>10}")
    for name, r in rows:
        print(f"{name:<12}{r['enqueue_per_s']:>15.1f}{r['exec_per_s']:>10.1f}{r['total_s']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
