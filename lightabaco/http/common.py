"""Helpers shared by the route modules: the caller, the services, case conversion, threadpool calls."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from lightabaco.abaco import busy
from lightabaco.sharing.identity import Identity
from lightabaco.protocol.serialize import to_case
from lightabaco.http.envelope import JSONEnvelope, ok

T = TypeVar("T")


def services_of(request: Request) -> Any:
    return request.app.state.services


def identity_of(request: Request) -> Identity:
    ident = request.state.identity  # set by the auth middleware for every routed request
    if not ident.api_server:
        base = str(request.base_url).rstrip("/")
        ident = dataclasses.replace(ident, api_server=base)
    return ident


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a (blocking, database-bound) core call off the event loop, waiting at most
    api_db_busy_timeout_s for another process's write lock (then DatabaseBusy: 503, retry)."""
    return await run_in_threadpool(busy.bounded, fn, *args, **kwargs)


class _Inline:
    # After a write found the database locked, the next ones go straight to the threadpool for a
    # while: when workers write often (claims, records), trying first on the loop would mostly fail,
    # and each failure costs the loop a retry and the request a second attempt (measured: 95-129
    # msg/s against 161-166 through the threadpool alone, with 2 workers running).
    blocked_until = 0.0
    BACKOFF_S = 0.2


async def call_now(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A short write (one transaction, e.g. the message enqueue) on the event loop's own thread when
    the database is free this instant, else exactly like call(): off the loop, bounded, 503 when the
    lock stays held. The thread hop and the threads' contention for SQLite's write lock it saves were
    half the enqueue's server CPU with 8 clients (issue 14)."""
    now = time.monotonic()
    if now >= _Inline.blocked_until:
        try:
            return busy.now(fn, *args, **kwargs)
        except busy.WouldWait:
            _Inline.blocked_until = time.monotonic() + _Inline.BACKOFF_S
    return await call(fn, *args, **kwargs)


def case_of(request: Request) -> str:
    return services_of(request).settings.case


def respond(request: Request, result: Any, message: str, nested: tuple[str, ...] = ()) -> JSONEnvelope:
    """Envelope a displayed object (or list of them) in the instance's case mode.

    `nested` names list-valued keys whose items are displayed objects too (e.g. "executions").
    """
    case = case_of(request)
    if case == "camel":
        def convert(obj: Any) -> Any:
            if isinstance(obj, dict):
                for key in nested:
                    if isinstance(obj.get(key), list):
                        obj = {**obj, key: [to_case(i, case) for i in obj[key]]}
                return to_case(obj, case)
            return obj

        result = [convert(r) for r in result] if isinstance(result, list) else convert(result)
    return ok(result, message)


def has_search_params(request: Request) -> bool:
    keys = set(request.query_params.keys())
    return bool(keys - {"x-nonce"})
