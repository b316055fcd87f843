"""create_app(services) -> Starlette: routes under /actors, /actors/v2 and /v3/actors, CORS,
authentication, Abaco envelopes for every error (404 unknown path, 405 wrong method, 500 otherwise)."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lightabaco.abaco import busy
from lightabaco.abaco.doorbell import ExecutionWaiter
from lightabaco.protocol.errors import AbacoError
from lightabaco.http import envelope
from lightabaco.http import (routes_actors, routes_admin, routes_executions, routes_messages,
                             routes_search, routes_sharing, routes_workers)
from lightabaco.http.auth import AuthMiddleware
from lightabaco.http.routes_health import HealthEndpoint
from lightabaco.http.registry_api import ImageDistribution
from lightabaco.web import logstream
from lightabaco.web.middleware import WebMiddleware

log = logging.getLogger(__name__)

NOT_FOUND = "Invalid request: the requested URL is not an Abaco endpoint."
BAD_METHOD = "Invalid HTTP method on requested resource."
_SLASHES = re.compile(r"/{2,}")


class PathNormalizer:
    """Serve one resource tree under three prefixes and tolerate repeated or trailing slashes:
    /actors/v2/x and /v3/actors/x both become /actors/x before routing (spec §1.1)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            new = _SLASHES.sub("/", path)
            if new.startswith("/v3/actors"):
                new = new[len("/v3"):]
            elif new == "/actors/v2" or new.startswith("/actors/v2/"):
                new = "/actors" + new[len("/actors/v2"):]
            if len(new) > 1 and new.endswith("/"):
                new = new.rstrip("/") or "/"
            if new != path:
                scope = dict(scope)
                scope["path"] = new
                scope["raw_path"] = new.encode()
        await self.app(scope, receive, send)


async def abaco_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AbacoError)
    return envelope.error(exc.message, exc.code)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return envelope.error(NOT_FOUND, 404)
    if exc.status_code == 405:
        return envelope.error(BAD_METHOD, 405)
    return envelope.error(str(exc.detail), exc.status_code)


TOO_DEEP = ("The request is nested too deeply to be read (JSON or form input); flatten it, or send it as a "
            "string or binary message.")


async def database_busy(request: Request, exc: Exception) -> Response:
    return envelope.error(busy.busy_message(exc), 503)


async def too_deep(request: Request, exc: Exception) -> Response:
    return envelope.error(TOO_DEEP, 400)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    # The store's "database is locked" (SQLITE_BUSY), wherever it was raised: a clear 503, retry.
    if busy.is_busy(exc):
        return envelope.error(busy.busy_message(exc), 503)
    if isinstance(exc, RecursionError):  # a parser or converter recursing on hostile nesting
        return envelope.error(TOO_DEEP, 400)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return envelope.error(f"Unrecognized exception type: {type(exc).__name__}. Exception: {exc}", 500)


def create_app(services: Any, waiter: ExecutionWaiter | None = None) -> Starlette:
    envelope.set_version(services.settings.version)
    busy.configure(getattr(services.settings, "api_db_busy_timeout_s", busy.DEFAULT_WAIT_S))
    if waiter is None:
        waiter = ExecutionWaiter(services.settings.home)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        busy.limit_event_loop_thread()
        try:
            waiter.start()
        except OSError as exc:  # another process already uses this name: fall back to polling
            log.warning("sync-message doorbell unavailable (%s); synchronous messages will poll", exc)
        try:
            yield
        finally:
            waiter.stop()

    # Fixed words (/actors/admin, /search, /aliases, /configs, /utilization) come before
    # /actors/{actor_id} (spec §1.1): the sharing routes are listed first.
    routes: list = routes_admin.routes + routes_search.routes + routes_sharing.routes
    routes += routes_actors.routes + routes_messages.routes + routes_executions.routes
    routes += routes_workers.routes + logstream.routes

    middleware = [Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"],
                             allow_headers=["*"]),
                  Middleware(PathNormalizer), Middleware(HealthEndpoint, services=services),
                  Middleware(ImageDistribution, services=services),  # /v2/: worker hosts pull images
                  Middleware(WebMiddleware, services=services, routes=routes),  # /ui, /docs, /metrics
                  Middleware(AuthMiddleware, services=services)]  # health and web pages come before auth

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={AbacoError: abaco_error, HTTPException: http_error,
                                        busy.DatabaseBusy: database_busy, RecursionError: too_deep,
                                        Exception: unexpected_error})
    app.state.services = services
    app.state.waiter = waiter
    app.state.clock = time.monotonic
    return app
