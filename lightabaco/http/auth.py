"""Authentication middleware (pure ASGI): sets `request.state.identity` or answers an error envelope.

Order of credentials, as in Abaco: a token (`X-Tapis-Token`, or `Authorization: Bearer`), then - only
when `trust_v2_jwt` is on - an Abaco v2 `X-Jwt-Assertion-<TENANT>` header, then `?x-nonce=` (only
consulted when no other credential is present). `--auth none` makes every caller the owner (a token,
if sent and valid, still selects its user). OPTIONS requests pass through (CORS preflight).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from lightabaco.sharing import auth, nonces, permissions
from lightabaco.protocol.errors import AbacoError, NotFound
from lightabaco.sharing.identity import Identity
from lightabaco.http.envelope import error_bytes

NO_CREDENTIALS = ("No JWT or nonce provided. Send the token printed by `lightabaco token` as "
                  "'Authorization: Bearer <token>' or 'X-Tapis-Token: <token>'.")
SEARCH_NONCE = "'x-nonce' query parameter on the '/actors/search/{database}' endpoint does not resolve."
NONCE_PATHS = ("x-nonce can only be used on the paths of the actor or alias it was made for "
               "(/actors/<id>/... or /actors/aliases/<alias>/...).")
ROUTE_WORDS = ("configs", "utilization", "admin", "aliases")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _api_server(scope: Scope, headers: dict[str, str]) -> str:
    scheme = headers.get("x-forwarded-proto") or scope.get("scheme", "http")
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scheme}://{host}{scope.get('root_path', '')}"


def _token(headers: dict[str, str]) -> str | None:
    token = headers.get("x-tapis-token", "").strip()
    if token:
        return token
    value = headers.get("authorization", "").strip()
    if value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def resource_segments(path: str) -> list[str] | None:
    """Path segments after the actors root (`/actors`, `/actors/v2`, `/v3/actors`); None for other paths."""
    segs = [s for s in path.split("/") if s]
    if segs[:2] == ["v3", "actors"]:
        return segs[2:]
    if segs[:2] == ["actors", "v2"]:
        return segs[2:]
    if segs[:1] == ["actors"]:
        return segs[1:]
    return None


def required_nonce_level(method: str, segs: list[str]) -> int:
    # Listing nonces would hand a READ nonce the ids of stronger nonces: nonce endpoints need UPDATE.
    if "nonces" in segs:
        return permissions.UPDATE
    if method in ("GET", "HEAD"):
        return permissions.READ
    if method == "POST" and segs and segs[-1] == "messages":
        return permissions.EXECUTE
    return permissions.UPDATE


class AuthMiddleware:
    def __init__(self, app: ASGIApp, services: Any) -> None:
        self.app = app
        self.services = services
        self.settings = services.settings
        self.authn = auth.get_authenticator(services)
        auth.warn_if_trusting(self.settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        api_server = _api_server(scope, headers)
        try:
            identity = self._owner_fast_path(headers, api_server)
            if identity is None:
                identity = await run_in_threadpool(self.authenticate, scope, headers, api_server)
        except AbacoError as exc:
            await _send_error(send, exc.message, exc.code)
            return
        state = scope.setdefault("state", {})
        state["identity"] = identity
        await self.app(scope, receive, send)

    def _owner_fast_path(self, headers: dict[str, str], api_server: str) -> Identity | None:
        """The owner token, and tokens verified in the last seconds, need no database: check them
        without leaving the event loop."""
        token = _token(headers)
        if token is None:
            return None
        import hmac

        if hmac.compare_digest(token.encode(), self.authn.owner().token.encode()):
            return self.authn.owner_identity("token", api_server)
        return self.authn.cached(token, api_server)

    def authenticate(self, scope: Scope, headers: dict[str, str], api_server: str) -> Identity:
        token = _token(headers)
        no_auth = self.settings.auth == "none"
        if token is not None:
            if not no_auth:
                return self.authn.verify_token(token, api_server)
            try:
                return self.authn.verify_token(token, api_server)
            except AbacoError:
                return self.authn.owner_identity("none", api_server)
        if getattr(self.settings, "trust_v2_jwt", False):
            found = auth.decode_v2_assertion(headers, api_server)
            if found is not None:
                return found
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        nonce_id = (query.get("x-nonce") or [""])[0].strip()
        if nonce_id and not no_auth:
            return self.redeem_nonce(scope["path"], scope["method"], nonce_id, api_server)
        if no_auth:
            return self.authn.owner_identity("none", api_server)
        if any(h.startswith("x-jwt-assertion-") for h in headers):
            raise AbacoError(NO_CREDENTIALS + " X-Jwt-Assertion headers are accepted only when the server runs "
                             "with LIGHTABACO_TRUST_V2_JWT=true (insecure; for Abaco's v2 test suite).", 400)
        raise AbacoError(NO_CREDENTIALS, 400)

    def redeem_nonce(self, path: str, method: str, nonce_id: str, api_server: str) -> Identity:
        from lightabaco.sharing.aliases import actor_exists, is_hashid, resolve_actor_id

        segs = resource_segments(path)
        if segs is None or not segs:
            raise AbacoError(NONCE_PATHS, 400)
        if segs[0] == "search":
            raise NotFound(SEARCH_NONCE)
        tenant = nonces.nonce_tenant(nonce_id)
        alias: str | None = None
        if segs[0] == "aliases" and len(segs) >= 2:
            alias = segs[1]
        elif segs[0] in ROUTE_WORDS:
            raise AbacoError(NONCE_PATHS, 400)
        elif not is_hashid(segs[0]):
            alias = segs[0]
        identifier = alias if alias is not None else segs[0]
        try:
            actor_id = resolve_actor_id(self.services, tenant, identifier)
        except AbacoError:
            raise nonces.NonceError("Nonce does not exist.") from None
        actor_dbid = f"{tenant}_{actor_id}" if actor_exists(tenant, actor_id) else None
        return nonces.redeem(nonce_id, actor_dbid=actor_dbid, alias=alias,
                             level=required_nonce_level(method, segs), api_server=api_server)


async def _send_error(send: Send, message: str, code: int) -> None:
    status, body = error_bytes(message, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
