"""/actors/{actor_id}/messages: count, send (async and synchronous), purge (spec §2.4, §6)."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lightabaco.abaco import executions, messages
from lightabaco.protocol.errors import AbacoError, ValidationError
from lightabaco.protocol.serialize import to_case
from lightabaco.http.common import call, call_now, identity_of, respond, services_of
from lightabaco.http.envelope import error, ok
from lightabaco.http.parsing import form_fields, media_type, parse_json, query_fields, read_body

UNSERIALIZABLE = ("message POST body could not be serialized. Pass JSON data or use the message "
                  "attribute.")
# Said after Abaco's words when a body came without a usable type: the usual cause is a binary message
# sent without its header (curl --data-binary sets application/x-www-form-urlencoded).
BINARY_HINT = (" To send binary data, set the header 'Content-Type: application/octet-stream' (curl: -H "
               "'Content-Type: application/octet-stream' --data-binary @FILE); this body came with {kind}.")


async def interpret(request: Request, limit: int) -> tuple[Any, str]:
    """(payload, content type) following Abaco's order: `message` field, binary, JSON, raw JSON text."""
    kind = media_type(request)
    if kind == "application/octet-stream":
        query_msg = request.query_params.get("message")
        if query_msg:
            return query_msg, messages.STR
        length = request.headers.get("content-length")
        if length is None:
            raise ValidationError("Content Length required for application/octet-stream.")
        if not length.strip().isdigit():
            raise ValidationError("Content Length must be an integer.")
        body = await read_body(request, limit,
                               too_large=f"Message exceeds max content length of: {limit}")
        return body, messages.BINARY
    body = await read_body(request, limit, too_large=f"Message exceeds max content length of: {limit}")
    fields = query_fields(request)
    fields.update(await form_fields(request, body))
    parsed: Any = None
    if kind == "application/json" and body.strip():
        parsed = parse_json(body)
        if isinstance(parsed, dict):
            fields.update(parsed)
    value = fields.get("message")
    if isinstance(value, tuple):
        value = value[0]
    if value not in (None, ""):
        return str(value), messages.STR
    if parsed:
        if isinstance(parsed, (dict, list)):
            return parsed, messages.JSON
        return parsed, messages.STR
    try:
        loose = json.loads(body) if body.strip() else None
    except ValueError:
        loose = None
    if loose is not None and body.strip():
        return loose, messages.STR
    if body.strip():
        shown = f"Content-Type {kind!r}" if kind else "no Content-Type"
        raise ValidationError(UNSERIALIZABLE + BINARY_HINT.format(kind=shown))
    raise ValidationError(UNSERIALIZABLE)


def message_query(request: Request) -> dict[str, str]:
    """Every query parameter except `message` becomes an environment variable of the execution."""
    return {k: v for k, v in request.query_params.items() if k != "message"}


async def actor_messages(request: Request) -> Response:
    services, identity = services_of(request), identity_of(request)
    actor_id = request.path_params["actor_id"]
    if request.method == "GET":
        result = await call(messages.count_messages, services, identity, actor_id)
        return respond(request, result, "The request was successful")
    if request.method == "DELETE":
        result = await call(messages.purge_messages, services, identity, actor_id)
        return respond(request, result, "The request was successful")
    synchronous = request.query_params.get("_abaco_synchronous", "").lower() == "true"
    payload, content_type = await interpret(request, services.settings.max_body_bytes)
    # On the loop when the database is free this instant (no thread hop), else in the threadpool like
    # every database call: a locked database must never stall the event loop.
    sent = await call_now(messages.send_message, services, identity, actor_id, payload, content_type,
                          message_query(request), synchronous)
    if synchronous:
        return await wait_synchronous(request, sent)
    result = sent.result
    if services.settings.case == "camel":
        result = to_case(result, "camel", drop_none=False)
    return ok(result, "The request was successful")


async def wait_synchronous(request: Request, sent: messages.Sent) -> Response:
    """Block until the execution ends; answer its first result, else its logs (spec §6)."""
    services = services_of(request)
    waiter = request.app.state.waiter
    deadline = services.settings.sync_timeout_s
    loop_time = request.app.state.clock
    end = loop_time() + deadline
    with waiter.watch(sent.execution_dbid) as watch:
        while True:
            # Indexed lookups, run inline like the enqueue (no thread hop on the hot path).
            data = executions.pop_result(services, sent.execution_dbid)
            if data is not None:
                return Response(data, media_type="application/octet-stream")
            status = executions.status_of(sent.execution_dbid)
            if status in executions.TERMINAL:
                data = executions.pop_result(services, sent.execution_dbid)
                if data is not None:
                    return Response(data, media_type="application/octet-stream")
                if status == "ERROR":
                    reason = executions.error_reason(sent.execution_dbid)
                    return error(f"Synchronous execution {sent.execution_id} ended in ERROR: {reason} "
                                 f"Inspect it with GET .../executions/{sent.execution_id}.", 500,
                                 result={"execution_id": sent.execution_id})
                text = executions.final_logs(services, sent.execution_dbid)
                return Response(text, media_type="text/html")
            if status is None:
                raise AbacoError(f"Execution {sent.execution_id} disappeared (its actor was deleted).",
                                 404)
            remaining = end - loop_time()
            if remaining <= 0:
                return error(f"Synchronous execution {sent.execution_id} did not finish within "
                             f"{deadline:g} s; it is still queued or running. Poll GET /actors/"
                             f"{request.path_params['actor_id']}/executions/{sent.execution_id} for its "
                             "status and results.", 504, result={"execution_id": sent.execution_id})
            await watch.wait(min(remaining, 1.0))


routes = [
    Route("/actors/{actor_id}/messages", actor_messages, methods=["GET", "POST", "DELETE"]),
]
