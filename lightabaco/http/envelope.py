"""Abaco's response envelope {result, status, version, message} with Content-Type exactly
application/json (tapipy only parses JSON when the header has no charset, spec §1.2)."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

JSON_TYPE = "application/json"
_version = "1.0.0-lightabaco"


def set_version(version: str) -> None:
    global _version
    _version = version


def _dumps(content: Any) -> bytes:
    return json.dumps(content, separators=(",", ":"), default=str).encode()


def _envelope(result: Any, status: str, message: str) -> dict[str, Any]:
    return {"result": result, "status": status, "version": _version, "message": message,
            "metadata": {}}


class JSONEnvelope(Response):
    media_type = JSON_TYPE
    charset = ""  # no "; charset=utf-8" suffix

    def render(self, content: Any) -> bytes:
        return _dumps(content)


def ok(result: Any, message: str, status_code: int = 200) -> JSONEnvelope:
    return JSONEnvelope(_envelope(result, "success", message), status_code=status_code)


def error(message: str, status_code: int = 400, result: Any = None) -> JSONEnvelope:
    return JSONEnvelope(_envelope(result, "error", message), status_code=status_code)


def error_bytes(message: str, status_code: int) -> tuple[int, bytes]:
    """For pure-ASGI middleware that answers without Starlette: (status, body)."""
    return status_code, _dumps(_envelope(None, "error", message))
