"""Abaco's envelope for the few errors the web module answers itself (outside the API's routes, whose
errors the HTTP edge formats): same shape and Content-Type as lightabaco/http/envelope.py."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

VERSION = {"value": "1.0.0-lightabaco"}


def set_version(version: str) -> None:
    VERSION["value"] = version


def error(message: str, status_code: int = 400, result: Any = None) -> Response:
    body = {"result": result, "status": "error", "version": VERSION["value"], "message": message, "metadata": {}}
    return Response(json.dumps(body, separators=(",", ":")).encode(), status_code=status_code,
                    media_type="application/json")
