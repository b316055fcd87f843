"""WebMiddleware: serves the pages beside the API (/ui/, /docs, /openapi.json, /metrics) before the API's
authentication (the pages are public files; /metrics checks its own access; the dashboard's data comes
from the API with the user's token), and times every API request for /metrics.

It sits after the path normalizer (it sees /actors/v2/x as /actors/x) and before authentication (refused
requests are counted too). Requests are labelled by route template, never by raw path, so ids in URLs
cannot grow the label set; paths that match no route share the label "unmatched".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lightabaco.web import envelope, metrics, openapi

STATIC = Path(__file__).resolve().parent / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# Only files shipped in the package, by exact name: a request can never name another file.
ASSETS: dict[str, dict[str, Path]] = {
    section: {p.name: p for p in sorted((STATIC / section).iterdir()) if p.suffix in _TYPES}
    for section in ("ui", "docs") if (STATIC / section).is_dir()
}
SECURITY_HEADERS = {
    # Everything the pages need comes from this server; no inline script, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
WEB_PREFIXES = ("/ui", "/docs", "/openapi.json", "/metrics")
NOT_HERE = "No such page. The dashboard is at /ui/, the API description at /docs and /openapi.json."


def _asset(section: str, name: str) -> Response:
    path = ASSETS.get(section, {}).get(name)
    if path is None:
        return envelope.error(NOT_HERE, 404)
    return Response(path.read_bytes(), headers={**SECURITY_HEADERS, "Content-Type": _TYPES[path.suffix]})


async def ui_index(request: Request) -> Response:
    return _asset("ui", "index.html")


async def ui_asset(request: Request) -> Response:
    return _asset("ui", request.path_params["name"])


async def docs_index(request: Request) -> Response:
    return _asset("docs", "index.html")


async def docs_asset(request: Request) -> Response:
    return _asset("docs", request.path_params["name"])


async def openapi_json(request: Request) -> Response:
    state = request.app.state
    doc = openapi.build(state.api_routes, state.services.settings.version)
    return JSONResponse(doc, headers={"Cache-Control": "no-cache"})


def _is_web(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in WEB_PREFIXES)


class WebMiddleware:
    def __init__(self, app: ASGIApp, services: Any, routes: list[Any]) -> None:
        self.app = app
        self.routes = routes
        metrics.check_mode(getattr(services.settings, "metrics_access", "loopback"))
        envelope.set_version(services.settings.version)
        self.metrics = metrics.ApiMetrics()
        self.web = Starlette(routes=[
            Route("/ui", ui_index, methods=["GET"]),
            Route("/ui/{name}", ui_asset, methods=["GET"]),
            Route("/docs", docs_index, methods=["GET"]),
            Route("/docs/{name}", docs_asset, methods=["GET"]),
            Route("/openapi.json", openapi_json, methods=["GET"]),
            Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        ])
        self.web.state.services = services
        self.web.state.api_routes = routes
        self.web.state.web_metrics = self.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/":  # people who open the server's address land on the dashboard
            await RedirectResponse("/ui/", status_code=307)(scope, receive, send)
            return
        if _is_web(path):
            await self.web(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe(scope["method"], self.template(scope), status["code"],
                                 time.perf_counter() - started)

    def template(self, scope: Scope) -> str:
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
            if match == Match.PARTIAL and partial is None:
                partial = route.path  # the path exists, the method does not (405)
        return partial or "unmatched"
