"""`GET /health`, answered before authentication (a load balancer or systemd watchdog has no token).

An ASGI middleware rather than a route: the path is exact (`/health`, not under the /actors
prefixes), and it must not pass through the auth middleware that guards every route.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from lightabaco.abaco import health

PATH = "/health"


class HealthEndpoint:
    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != PATH or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        healthy, body = await run_in_threadpool(health.snapshot, self.services)
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 200 if healthy else 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"cache-control", b"no-store"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else data})
