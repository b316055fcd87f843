"""Housekeeping: expire logs (log_ex), results (60 minutes) and old executions (execution_retention_s),
recompute result quotas, drop stray live-log files and sandbox scratch left by crashes, and remove
unpacked images no name needs (images_gc_s) — so that nothing in the home grows without bound.

Each step is a short DELETE, so it never holds the database long enough to slow requests down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lightabaco.abaco import result_quota
from lightabaco.store.db import write_tx
from lightabaco.store.models import Execution, Log, Result

log = logging.getLogger(__name__)
STRAY_LOG_AGE_S = 3600.0
EXPIRE_BATCH = 500  # executions deleted per transaction: short writes, requests keep flowing
_last_images_gc = [0.0]


def expire_executions(settings: Any, now: float) -> int:
    """Delete finished executions older than execution_retention_s, with their logs and results."""
    keep = settings.execution_retention_s
    if not keep or keep <= 0:
        return 0
    total = 0
    while True:
        old = [r.dbid for r in Execution.select(Execution.dbid).where(
            Execution.status.in_(["COMPLETE", "ERROR"]) & (Execution.finish_time < now - keep)).limit(EXPIRE_BATCH)]
        if not old:
            return total
        with write_tx():
            Log.delete().where(Log.execution_dbid.in_(old)).execute()
            Result.delete().where(Result.execution_dbid.in_(old)).execute()
            total += Execution.delete().where(Execution.dbid.in_(old)).execute()
        if len(old) < EXPIRE_BATCH:
            return total


def clean_disk(services: Any, now: float) -> int:
    """Sandbox scratch left by crashed executions, and (every images_gc_s, when nothing runs here)
    unpacked images no name needs. Returns the number of scratch entries removed."""
    removed = 0
    backend = getattr(services, "_backend", None)  # only where this process runs executions itself
    scratch = getattr(backend, "scratch", None)
    if scratch is not None and hasattr(scratch, "collect_stale"):
        try:
            removed = len(scratch.collect_stale())  # only directories no live execution holds locked
        except OSError as exc:
            log.warning("housekeeping: scratch not cleaned: %s", exc)
    every = services.settings.images_gc_s
    if every and every > 0 and now - _last_images_gc[0] >= every:
        host = services.settings.host_id()
        running = Execution.select().where((Execution.status == "RUNNING")
                                           & ((Execution.host == host) | Execution.host.is_null())).count()
        if not running:  # an execution may use an image whose name just moved: wait until none runs
            _last_images_gc[0] = now
            try:
                freed = services.images.gc()
                if freed:
                    log.info("housekeeping: %d bytes of unneeded unpacked images removed", freed)
            except Exception as exc:  # a busy or damaged store: say so, try again next time
                log.warning("housekeeping: image store not cleaned: %s", exc)
    return removed


def run(services: Any, now: float | None = None) -> dict[str, int]:
    now = time.time() if now is None else now
    logs = Log.delete().where(Log.expires.is_null(False) & (Log.expires < now)).execute()
    results = Result.delete().where(Result.created < now - services.settings.results_ttl_s).execute()
    # Expiry gave room back: recompute the per-owner result quotas from what is stored now (this
    # also corrects any counter a crashed process left behind, and drops deleted actors' results).
    results += result_quota.reconcile()
    stray = 0
    log_dir = services.settings.exec_dir / "logs"
    if log_dir.is_dir():
        running = {row.live_log_path for row in Execution.select(Execution.live_log_path).where(
            Execution.status == "RUNNING")}
        for path in log_dir.iterdir():
            try:
                if str(path) not in running and now - path.stat().st_mtime > STRAY_LOG_AGE_S:
                    path.unlink()
                    stray += 1
            except OSError:
                continue
    executions = expire_executions(services.settings, now)
    scratch = clean_disk(services, now)
    if logs or results or stray or executions or scratch:
        log.info("housekeeping: %d logs, %d results, %d stray log files, %d old executions, %d scratch "
                 "directories expired", logs, results, stray, executions, scratch)
    return {"logs": logs, "results": results, "stray_logs": stray, "executions": executions,
            "scratch": scratch}
