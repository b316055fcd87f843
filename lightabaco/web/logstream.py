"""GET /actors/{actor_id}/executions/{execution_id}/logs/stream: an execution's log as server-sent events,
live while it runs, ending when the execution ends.

Authentication is the API's own (the Authorization or X-Tapis-Token header; the dashboard reads the
stream with fetch(), so no token ever goes into a URL). The server reads the log once per
`log_stream_poll_s` for each open stream (one reader per watching client, never a client polling
storm), sends only what was appended, and closes the stream after `log_stream_max_s` at the latest.

Events (each `data:` is one JSON line):
  log     {"text": "..."}          text appended since the last event
  reset   {"text": "..."}          the whole log, when it no longer extends what was sent (final copy)
  status  {"status", "exit_code", "status_message"}  on every change of status
  end     {"status"}               the execution has ended (or the stream's time ran out)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from lightabaco.abaco import busy, executions

KEEPALIVE_S = 15.0
FINAL = ("COMPLETE", "ERROR")


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _call(fn: Any, *args: Any) -> Any:
    return await run_in_threadpool(busy.bounded, fn, *args)


def _status(shown: dict[str, Any]) -> dict[str, Any]:
    return {"status": shown.get("status"), "exit_code": shown.get("exit_code", shown.get("exitCode")),
            "status_message": shown.get("status_message", shown.get("statusMessage", ""))}


async def _events(request: Request, services: Any, identity: Any, actor_id: str, eid: str,
                  first: dict[str, Any]) -> AsyncIterator[bytes]:
    settings = services.settings
    poll = max(0.05, float(getattr(settings, "log_stream_poll_s", 0.5)))
    deadline = time.monotonic() + float(getattr(settings, "log_stream_max_s", 3600.0))
    sent = ""
    status = _status(first)
    yield _event("status", status)
    last_out = time.monotonic()
    while True:
        # Read the status before the log: when the status says final, the log read after it is final too.
        shown = await _call(executions.get_execution, services, identity, actor_id, eid)
        now_status = _status(shown)
        logs = (await _call(executions.get_logs, services, identity, actor_id, eid)).get("logs") or ""
        if logs != sent:
            if logs.startswith(sent):
                yield _event("log", {"text": logs[len(sent):]})
            else:
                yield _event("reset", {"text": logs})
            sent = logs
            last_out = time.monotonic()
        if now_status != status:
            status = now_status
            yield _event("status", status)
            last_out = time.monotonic()
        if status["status"] in FINAL or time.monotonic() > deadline:
            yield _event("end", {"status": status["status"]})
            return
        if time.monotonic() - last_out > KEEPALIVE_S:
            yield b": keepalive\n\n"
            last_out = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll)


async def log_stream(request: Request) -> StreamingResponse:
    services = request.app.state.services
    identity = request.state.identity
    if not identity.api_server:
        identity = dataclasses.replace(identity, api_server=str(request.base_url).rstrip("/"))
    actor_id, eid = request.path_params["actor_id"], request.path_params["execution_id"]
    # Unknown actor or execution, or no READ permission: an ordinary error envelope, before any event.
    first = await _call(executions.get_execution, services, identity, actor_id, eid)
    return StreamingResponse(_events(request, services, identity, actor_id, eid, first),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


routes = [Route("/actors/{actor_id}/executions/{execution_id}/logs/stream", log_stream, methods=["GET"])]
