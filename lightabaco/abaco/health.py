"""What `GET /health` reports: is this instance able to take and run messages?

Nothing here names a user, an actor or an image: the answer is served without credentials. Only
instance-wide numbers are shown (pool size, busy slots, queued messages) and whether each part works.
"""

from __future__ import annotations

import shutil
from typing import Any

from lightabaco.protocol.errors import AbacoError
from lightabaco.store.db import database

DRAINING_MESSAGE = ("The server is shutting down and accepts no new messages; running executions are "
                    "finishing. Send the message again once it is back (it restarts in a few seconds under "
                    "a service manager).")
_QUEUED_SQL = 'SELECT COUNT(*) FROM "message" WHERE "lease_owner" IS NULL'
_RUNNING_SQL = 'SELECT COUNT(*) FROM "message" WHERE "lease_owner" IS NOT NULL'
_BUSY_SQL = 'SELECT COUNT(*) FROM "worker" WHERE "status" = \'BUSY\''


class Draining(AbacoError):
    code = 503

    def __init__(self) -> None:
        super().__init__(DRAINING_MESSAGE, 503)


def refuse_if_draining(services: Any) -> None:
    if getattr(services, "draining", False):
        raise Draining()


def backend_problem(services: Any) -> str:
    """Why executions cannot run here, or "" (a cheap check: no sandbox is started)."""
    known = getattr(services, "backend_error", "")
    if known:
        return known
    wanted = services.settings.backend
    names = ["bwrap", "podman"] if wanted == "auto" else [wanted]
    if not any(shutil.which(n) for n in names):
        return f"none of {', '.join(names)} is installed; run `lightabaco doctor`."
    return ""


def snapshot(services: Any) -> tuple[bool, dict[str, Any]]:
    """(healthy, the JSON body). Healthy: the database answers, a backend exists, not draining."""
    body: dict[str, Any] = {"status": "ok", "checks": {}}
    checks = body["checks"]
    healthy = True
    try:
        queued = database.execute_sql(_QUEUED_SQL).fetchone()[0]
        running = database.execute_sql(_RUNNING_SQL).fetchone()[0]
        busy = database.execute_sql(_BUSY_SQL).fetchone()[0]
        checks["database"] = {"ok": True}
        body["queue"] = {"waiting": queued, "running": running}
        body["pool"] = {"size": getattr(services, "pool_size", 0), "busy": busy}
    except Exception as exc:  # noqa: BLE001 - any failure of the store is the answer here
        healthy = False
        checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}. Check the disk and "
                              "the database file (see docs/operating.md, 'What to monitor')."}
    problem = backend_problem(services)
    checks["sandbox"] = {"ok": not problem, **({"error": problem} if problem else {}),
                         "backend": services.settings.backend}
    healthy = healthy and not problem
    if getattr(services, "draining", False):
        healthy = False
        body["draining"] = True
    body["status"] = "ok" if healthy else "unavailable"
    return healthy, body
