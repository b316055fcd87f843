"""Housekeeping: expire logs (log_ex) and results (60 minutes), recompute result quotas, and drop
stray live-log files.

Each step is a short DELETE, so it never holds the database long enough to slow requests down.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lightabaco.abaco import result_quota
from lightabaco.store.models import Execution, Log, Result

log = logging.getLogger(__name__)
STRAY_LOG_AGE_S = 3600.0


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
    if logs or results or stray:
        log.info("housekeeping: %d logs, %d results, %d stray log files expired", logs, results, stray)
    return {"logs": logs, "results": results, "stray_logs": stray}
