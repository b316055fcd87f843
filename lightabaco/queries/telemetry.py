"""Numbers for `/metrics`, read from the database at scrape time.

Executions finish inside worker processes; the database is where their outcome lands, so counting there
is exact across processes (and across restarts) without instrumenting the workers. Each function is one
aggregate query (a linear scan at worst), never a query per actor or per execution.

Counts cover the records that still exist: expired logs or deleted actors take their numbers with them,
which Prometheus reads as a counter reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

# Counter rows (store.models.Counter) kept by the pull processes (workers/puller.py).
IMAGE_PULLS = "image_pulls"
IMAGE_PULL_FAILURES = "image_pull_failures"


@dataclass
class Histogram:
    """Cumulative bucket counts (upper bound -> observations <= bound), the count and the sum."""
    buckets: list[tuple[float, int]] = field(default_factory=list)
    count: int = 0
    total: float = 0.0


@dataclass
class Snapshot:
    executions: list[tuple[str, str, str, int]]  # (tenant, actor id, status, count)
    queue_depth: list[tuple[str, str, int]]      # (tenant, actor id, queued messages)
    workers: list[tuple[str, int]]               # (status, count)
    actors: list[tuple[str, int]]                # (status, count)
    runtime: Histogram
    startup: Histogram
    result_bytes: int
    results: int
    log_bytes: int
    counters: dict[str, int]


def _rows(sql: str, params: Sequence[object] = ()) -> list[tuple]:
    from lightabaco.store.db import database
    from lightabaco.store.fast import placeholders

    return list(database.execute_sql(placeholders(sql), tuple(params)).fetchall())


def _octets(column: str) -> str:
    """Bytes, not characters, of a text column (logs are UTF-8 text)."""
    from lightabaco.store.db import database

    if "postgres" in type(database.obj).__name__.lower():
        return f"OCTET_LENGTH({column})"
    return f"LENGTH(CAST({column} AS BLOB))"


def _histogram(expr: str, where: str, bounds: Sequence[float]) -> Histogram:
    """One pass over the matching executions: SUM(CASE ...) per bucket, the count and the sum."""
    cases = ", ".join(f'SUM(CASE WHEN {expr} <= {float(b)!r} THEN 1 ELSE 0 END)' for b in bounds)
    sql = f'SELECT COUNT(*), COALESCE(SUM({expr}), 0){", " + cases if cases else ""} FROM "execution" WHERE {where}'
    row = _rows(sql)[0]
    return Histogram(buckets=[(b, int(n or 0)) for b, n in zip(bounds, row[2:])], count=int(row[0] or 0),
                     total=float(row[1] or 0.0))


def snapshot(runtime_bounds: Sequence[float], startup_bounds: Sequence[float]) -> Snapshot:
    executions = [(str(t), str(a), str(s), int(n)) for t, a, s, n in _rows(
        'SELECT a."tenant", a."id", e."status", COUNT(*) FROM "execution" e '
        'JOIN "actor" a ON a."dbid" = e."actor_dbid" GROUP BY a."tenant", a."id", e."status"')]
    queue = [(str(t), str(a), int(n)) for t, a, n in _rows(
        'SELECT a."tenant", a."id", COUNT(m."id") FROM "actor" a LEFT JOIN "message" m '
        'ON m."actor_dbid" = a."dbid" GROUP BY a."tenant", a."id"')]
    workers = [(str(s), int(n)) for s, n in _rows('SELECT "status", COUNT(*) FROM "worker" GROUP BY "status"')]
    actors = [(str(s), int(n)) for s, n in _rows('SELECT "status", COUNT(*) FROM "actor" GROUP BY "status"')]
    finished = '"status" IN (\'COMPLETE\', \'ERROR\') AND "start_time" IS NOT NULL AND "finish_time" IS NOT NULL'
    runtime = _histogram('("finish_time" - "start_time")', finished, runtime_bounds)
    startup = _histogram('("start_time" - "message_received_time")',
                         '"start_time" IS NOT NULL AND "status" <> \'SUBMITTED\'', startup_bounds)
    n_results, result_bytes = _rows('SELECT COUNT(*), COALESCE(SUM(LENGTH("data")), 0) FROM "result"')[0]
    text_bytes = _octets('"text"')
    (log_bytes,) = _rows(f'SELECT COALESCE(SUM({text_bytes}), 0) FROM "log"')[0]
    counters = {str(k): int(v) for k, v in _rows(
        'SELECT "name", "value" FROM "counter" WHERE "name" IN (?, ?)', (IMAGE_PULLS, IMAGE_PULL_FAILURES))}
    return Snapshot(executions=executions, queue_depth=queue, workers=workers, actors=actors, runtime=runtime,
                    startup=startup, result_bytes=int(result_bytes or 0), results=int(n_results or 0),
                    log_bytes=int(log_bytes or 0), counters=counters)
