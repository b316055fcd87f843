"""The API server's image store, read-only, over the OCI distribution API: how worker hosts get images
without any external registry (issue 12).

    GET /v2/                                         200 with the worker credential, else 401 + challenge
    GET|HEAD /v2/<name>/manifests/<tag or digest>    a named image's manifest (or index)
    GET|HEAD /v2/<name>/blobs/<digest>               a config or layer, streamed

Only the worker credential opens it (lightabaco/images/credential.py), as HTTP basic auth (any
user name) or `Authorization: Bearer <credential>`: user tokens - even the owner's - are refused, because
images may hold other users' secrets and a user has no business reading images that are not theirs.
Nothing can be written. Clients verify every digest (lightabaco/images/distribution.py does).

An ASGI middleware, like /health: the paths are outside /actors and must not go through the user
authentication that guards the API. Errors are distribution-spec error bodies, not Abaco envelopes,
because the clients are registry clients.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from lightabaco.images import credential as worker_credential

PREFIX = "/v2"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
MANIFEST = re.compile(rf"^/v2/(?P<name>{_NAME})/manifests/(?P<ref>{_TAG}|{_DIGEST})$")
BLOB = re.compile(rf"^/v2/(?P<name>{_NAME})/blobs/(?P<digest>{_DIGEST})$")
CHUNK = 1 << 20
CHALLENGE = b'Basic realm="lightabaco worker credential"'
UNAUTHORIZED = ("the image endpoint needs the worker credential (the API server's <home>/worker-token, "
                "copied to the worker host), not a user token")


def _header(scope: Scope, name: bytes) -> str:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""


def presented_credential(authorization: str) -> str | None:
    """The secret in an Authorization header: a basic-auth password or a bearer token."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None


class ImageDistribution:
    """Answers /v2/... before the API's authentication; passes everything else on."""

    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services
        self.credential = worker_credential.ensure(services.settings)  # made at start-up: copy it to hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _error(send, 405, "UNSUPPORTED", "the image endpoint is read-only (GET and HEAD only)")
            return
        if not worker_credential.matches(self.credential, presented_credential(_header(scope, b"authorization"))):
            await _error(send, 401, "UNAUTHORIZED", UNAUTHORIZED, [(b"www-authenticate", CHALLENGE)])
            return
        head = method == "HEAD"
        if path in (PREFIX, PREFIX + "/"):
            await _send(send, 200, b"{}", b"application/json", head)
            return
        m = MANIFEST.match(path)
        if m:
            await self._manifest(send, m["name"], m["ref"], head)
            return
        m = BLOB.match(path)
        if m:
            await self._blob(send, m["digest"], head)
            return
        await _error(send, 404, "NAME_INVALID", "not a distribution API path this server serves "
                     "(/v2/<name>/manifests/<ref>, /v2/<name>/blobs/<digest>)")

    async def _manifest(self, send: Send, name: str, ref: str, head: bool) -> None:
        try:
            body, mtype, digest = await run_in_threadpool(self.services.images.manifest_for, name, ref)
        except Exception as exc:
            if not _image_error(exc):
                raise
            await _error(send, 404, "MANIFEST_UNKNOWN", str(exc))
            return
        await _send(send, 200, body, mtype.encode(), head, [(b"docker-content-digest", digest.encode())])

    async def _blob(self, send: Send, digest: str, head: bool) -> None:
        try:
            f, size = await run_in_threadpool(self.services.images.open_blob, digest)
        except Exception as exc:
            if not _image_error(exc):
                raise
            await _error(send, 404, "BLOB_UNKNOWN", str(exc))
            return
        try:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/octet-stream"),
                                    (b"content-length", str(size).encode()),
                                    (b"docker-content-digest", digest.encode()),
                                    (b"docker-distribution-api-version", b"registry/2.0")]})
            if head:
                await send({"type": "http.response.body", "body": b""})
                return
            left = size  # never more than the size announced, even if the file grew (it cannot: by digest)
            while left > 0:
                chunk = await run_in_threadpool(f.read, min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": left > 0})
            if left > 0:  # truncated on disk: end the body; the client's digest check refuses it
                await send({"type": "http.response.body", "body": b""})
        finally:
            f.close()


def _image_error(exc: BaseException) -> bool:
    """The image store's ImageError family (not found, bad name). Recognised by class name because the
    HTTP edge imports nothing of the images layer but its credential (docs/architecture.md)."""
    return any(c.__name__ == "ImageError" for c in type(exc).__mro__)


async def _send(send: Send, status: int, body: bytes, ctype: bytes, head: bool,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                            (b"docker-distribution-api-version", b"registry/2.0"), *(extra or [])]})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _error(send: Send, status: int, code: str, message: str,
                 extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    await _send(send, status, body, b"application/json", False, extra)
