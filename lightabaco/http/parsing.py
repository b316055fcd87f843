"""Request bodies as Abaco reads them (spec §1.4): JSON body, form body and query string merged into one
mapping (JSON wins, then form, then query); repeated form keys become tuples (`hints=a&hints=b`)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

from lightabaco.protocol.errors import AbacoError, ValidationError

NO_JSON = object()


class BodyTooLarge(AbacoError):
    code = 413


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int, too_large: str | None = None) -> bytes:
    """The raw body, refusing anything over `limit` bytes before reading it when the length is known."""
    message = too_large or (f"The request body exceeds the server's limit of {limit} bytes; send a "
                            "smaller body (the limit is the max_body_bytes setting).")
    code = 400 if too_large else 413
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise AbacoError(message, code)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise AbacoError(message, code)
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # let request.form()/json() reuse it
    return body


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ValidationError(f"The request body is not valid JSON ({exc}); send a JSON document with "
                              "Content-Type: application/json, or form fields.") from None


def _multi(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = (prev + (value,)) if isinstance(prev, tuple) else (prev, value)
        else:
            out[key] = value
    return out


async def form_fields(request: Request, body: bytes) -> dict[str, Any]:
    kind = media_type(request)
    if kind == "application/x-www-form-urlencoded":
        return _multi(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if kind == "multipart/form-data":
        form = await request.form()
        return _multi([(k, v if isinstance(v, str) else (await v.read()).decode("utf-8", "replace"))
                       for k, v in form.multi_items()])
    return {}


def query_fields(request: Request) -> dict[str, Any]:
    return _multi(list(request.query_params.multi_items()))


async def merged_fields(request: Request, limit: int) -> tuple[dict[str, Any], Any]:
    """(merged field mapping, parsed JSON body or NO_JSON)."""
    body = await read_body(request, limit)
    fields = query_fields(request)
    fields.update(await form_fields(request, body))
    parsed: Any = NO_JSON
    kind = media_type(request)
    # Like Flask's get_json(): JSON when declared; a body without a type is tried when it looks like one.
    if body.strip() and (kind == "application/json" or (not kind and body.strip()[:1] in (b"{", b"["))):
        parsed = parse_json(body)
        if isinstance(parsed, dict):  # other JSON values (a state body may be "abc") carry no fields
            fields.update(parsed)
    return fields, parsed
