"""Request bodies as Abaco reads them (spec §1.4): JSON body, form body and query string merged into one
mapping (JSON wins, then form, then query); repeated form keys become tuples (`hints=a&hints=b`)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from lightabaco.protocol.errors import AbacoError, ValidationError

NO_JSON = object()


class BodyTooLarge(AbacoError):
    code = 413


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class _Inflight:
    """Bytes of request bodies being received right now, by all requests together (event loop only)."""

    total = 0


# Defaults for apps built without the availability settings (unit tests with stand-in settings).
_BODY_DEFAULTS = {"body_memory_bytes": 262_144, "max_inflight_body_bytes": 268_435_456,
                  "body_timeout_s": 60.0}
# Deepest JSON document accepted (Python's parser and everything after it recurse per level).
MAX_JSON_DEPTH = 200


def _body_settings(request: Request) -> tuple[dict[str, Any], Path | None]:
    settings = getattr(getattr(request.app.state, "services", None), "settings", None)
    values = {k: getattr(settings, k, d) for k, d in _BODY_DEFAULTS.items()}
    home = getattr(settings, "home", None)
    return values, (Path(home) / "spool" if home else None)


def _spool(directory: Path | None, memory_bytes: int) -> Any:
    """A file-like buffer: in memory up to `memory_bytes`, then an unlinked temporary file."""
    if directory is not None:
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            directory = None
    return tempfile.SpooledTemporaryFile(max_size=memory_bytes, dir=directory)


async def read_body(request: Request, limit: int, too_large: str | None = None) -> bytes:
    """The raw body, refusing anything over `limit` bytes before reading it when the length is known.

    While a body arrives only `body_memory_bytes` of it stay in memory (the rest is spooled to an
    unlinked file in <home>/spool), all bodies in flight together may not exceed
    `max_inflight_body_bytes` (503), and it must be complete within `body_timeout_s` (408): stalled
    uploads cost neither memory nor time."""
    message = too_large or (f"The request body exceeds the server's limit of {limit} bytes; send a "
                            "smaller body (the limit is the max_body_bytes setting).")
    code = 400 if too_large else 413
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise AbacoError(message, code)
    bounds, spool_dir = _body_settings(request)
    size = reserved = 0
    spool = _spool(spool_dir, bounds["body_memory_bytes"])
    try:
        async with asyncio.timeout(bounds["body_timeout_s"]):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise AbacoError(message, code)
                if _Inflight.total + len(chunk) > bounds["max_inflight_body_bytes"]:
                    raise AbacoError("The server is receiving too many request bodies at once "
                                     "(max_inflight_body_bytes); retry in a few seconds.", 503)
                _Inflight.total += len(chunk)
                reserved += len(chunk)
                spool.write(chunk)
        spool.seek(0)
        body = spool.read()
    except TimeoutError:
        raise AbacoError(f"The request body was not received within {bounds['body_timeout_s']:g} s "
                         "(body_timeout_s); send it faster or smaller, and retry.", 408) from None
    except ClientDisconnect:
        raise AbacoError("The client closed the connection (or was too slow) before its body was "
                         "complete; send the whole body and retry.", 400) from None
    finally:
        _Inflight.total -= reserved
        spool.close()
    request._body = body  # let request.form()/json() reuse it
    return body


def json_depth_ok(value: Any, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests at most `max_depth` levels (iterative: no recursion here)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        if depth > max_depth:
            return False
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return True


TOO_DEEP = (f"The JSON document nests deeper than {MAX_JSON_DEPTH} levels; flatten it (or send it as "
            "a string or binary message).")


def parse_json(body: bytes) -> Any:
    try:
        value = json.loads(body)
    except RecursionError:
        raise ValidationError(TOO_DEEP) from None
    except ValueError as exc:
        raise ValidationError(f"The request body is not valid JSON ({exc}); send a JSON document with "
                              "Content-Type: application/json, or form fields.") from None
    if not json_depth_ok(value):
        raise ValidationError(TOO_DEEP)
    return value


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
