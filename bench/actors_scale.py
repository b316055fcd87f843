"""How lightabaco scales with the number of registered actors (issue 9): 10 actors vs 1,000.

    .venv/bin/python bench/actors_scale.py [--actors 10,1000] [--messages 100]

For each count, on a fresh server (default settings, test images): register the actors, then send
`--messages` messages one at a time to random actors and measure, per message, the time from the POST
to the execution's start; then the server's RSS (main process, and with its children), and the
latency of `GET /actors`. Prints one table with the counts side by side. Not part of CI: it takes
minutes and loads the machine.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.server import LiveServer, free_port, import_test_images, make_home  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of `pid`, RSS of `pid` and all its descendants), MiB."""
    def rss(p: int) -> int:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss(p)
        todo.extend(children.get(p, []))
    return rss(pid) / 1024, total / 1024


def measure(count: int, messages: int, layouts: Path, rng: random.Random) -> dict[str, float]:
    home = make_home("lab-scale-")
    try:
        import_test_images(home, layouts)
        server = LiveServer(home=home, port=free_port()).start(timeout=60)
        try:
            aids = [server.register("abacosamples/test", wait_ready=False)["id"] for _ in range(count)]
            time.sleep(5)  # let start-up work settle
            starts = []
            for _ in range(messages):
                aid = rng.choice(aids)
                t0 = time.time()
                eid = server.send(aid, "scale")
                ex = server.wait_execution(aid, eid, statuses=("COMPLETE", "ERROR"), timeout=120)
                starts.append(max(0.0, epoch(ex["start_time"]) - t0) if ex.get("start_time") else 120.0)
            lat = []
            for _ in range(20):
                t0 = time.monotonic()
                assert server.get("/actors").status_code == 200
                lat.append(time.monotonic() - t0)
            main_rss, all_rss = rss_mb(server.proc.pid)
            return {"start_median_ms": statistics.median(starts) * 1000, "start_p95_ms": pct(starts, 95) * 1000,
                    "rss_server_mb": main_rss, "rss_with_children_mb": all_rss,
                    "list_median_ms": statistics.median(lat) * 1000, "list_p95_ms": pct(lat, 95) * 1000}
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actors", default="10,1000")
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()
    rng = random.Random(9)
    layouts = Path(tempfile.mkdtemp(prefix="lab-scale-layouts-"))
    results = {int(n): measure(int(n), args.messages, layouts, rng) for n in args.actors.split(",")}
    keys = next(iter(results.values())).keys()
    print(f"{'metric':24}" + "".join(f"{n:>14} actors" for n in results))
    for key in keys:
        print(f"{key:24}" + "".join(f"{r[key]:>21.1f}" for r in results.values()))
    shutil.rmtree(layouts, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
