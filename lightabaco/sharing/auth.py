"""Who is calling: the owner token, per-user tokens (signed JWTs), actor tokens and Abaco v2 headers.

- The owner token lives in `<home>/token` (mode 0600). It is itself a JWT (tapipy decodes every access
  token it is given to read `exp`), but it is checked by a constant-time comparison with the file, so it
  works without the database.
- Users of a multi-user server get JWTs signed with the key in `<home>/jwt.key` (HS256, mode 0600),
  carrying `tapis/username`, `tapis/tenant_id` and `exp`. A user row holds the id (`jti`) of the single
  valid token, so issuing a new token or revoking the user invalidates older ones at once.
- Actor tokens (`_abaco_access_token`) are short-lived JWTs for the actor's owner.
- The v2 trusting decoder reads Abaco's `X-Jwt-Assertion-<TENANT>` headers WITHOUT checking signatures;
  it exists only so Abaco's own v2 test suite can run, and is off unless `trust_v2_jwt` is set.
Tokens are never logged and never put in error messages.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import getpass
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import jwt
import peewee

from lightabaco.protocol.errors import AbacoError, AuthenticationError
from lightabaco.sharing.identity import ADMIN, LIMITED, PRIVILEGED, ROLES, USER, Identity

log = logging.getLogger(__name__)

KEY_FILE = "jwt.key"
TOKEN_FILE = "token"
ALGORITHM = "HS256"
ISSUER = "lightabaco"
OWNER_TTL_S = 10 * 365 * 86400
USER_TTL_S = 365 * 86400
CACHE_S = 2.0
CACHE_MAX = 10000
USERNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
RESERVED_USERNAMES = {"ABACO_WORLD", "cron", "Abaco Event"}

# Abaco v2 (WSO2) and v3 (Tapis SK) role names → lightabaco roles.
V2_ROLE_MAP = {
    "Internal/abaco-admin": ADMIN, "abaco_admin": ADMIN,
    "Internal/abaco-privileged": PRIVILEGED, "abaco_privileged": PRIVILEGED,
    "Internal/abaco-limited": LIMITED, "abaco_limited": LIMITED,
}


class UserError(AbacoError):
    """A users command cannot be done (unknown user, duplicate, bad name or role)."""


# -- files in the home -----------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Create or replace a file readable only by its owner (mode 0600 from the start, no window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


@contextlib.contextmanager
def _creation_lock(home: Path, name: str) -> Iterator[None]:
    """Serialise first-start creation between processes sharing a home (the Procfile's `api` and
    `workers` start together): without it each could write its own key or token."""
    Path(home).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(home) / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_stripped(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def signing_key(home: Path) -> bytes:
    """The HS256 key of this home, created on first use."""
    path = Path(home) / KEY_FILE
    text = _read_stripped(path)
    if not text:
        with _creation_lock(home, "key"):
            text = _read_stripped(path)
            if not text:
                text = secrets.token_hex(32)
                _write_private(path, text + "\n")
    return bytes.fromhex(text)


def _encode(home: Path, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, signing_key(home), algorithm=ALGORITHM)


def _claims(username: str, tenant: str, kind: str, ttl_s: float, roles: list[str] | None = None,
            jti: str | None = None) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER, "sub": f"{username}@{tenant}", "iat": now, "exp": now + int(ttl_s),
        "jti": jti or secrets.token_hex(12),
        "tapis/username": username, "tapis/tenant_id": tenant, "tapis/token_type": "access",
        "lightabaco/kind": kind,
    }
    if roles is not None:
        claims["lightabaco/roles"] = sorted(roles)
    return claims


def ensure_owner_token(home: Path, tenant: str = "DEV", username: str | None = None) -> str:
    """Return the owner token of this home, creating key and token on first start."""
    path = Path(home) / TOKEN_FILE
    token = _read_stripped(path)
    if token:
        return token
    with _creation_lock(home, "token"):
        token = _read_stripped(path)
        if not token:
            owner = username or _default_owner_name()
            token = _encode(home, _claims(owner, tenant, "owner", OWNER_TTL_S, roles=[ADMIN]))
            _write_private(path, token + "\n")
    return token


def rotate_owner_token(home: Path) -> str:
    """Replace the owner token (the old one stops working at once); keeps the owner's name."""
    owner, tenant = owner_name(home)
    (Path(home) / TOKEN_FILE).unlink(missing_ok=True)
    return ensure_owner_token(home, tenant, owner)


def _default_owner_name() -> str:
    try:
        name = getpass.getuser()
    except Exception:  # no passwd entry (containers): a fixed, valid name
        name = "owner"
    return name if USERNAME_RE.match(name) else "owner"


def _unverified_claims(token: str) -> dict[str, Any]:
    """Decode a JWT payload without any check (only for our own file and the v2 trusting mode)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        data = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError) as exc:
        raise AuthenticationError("Invalid token: it is not a JWT. Get a valid token with "
                                  "`lightabaco token` or `lightabaco users token NAME`.") from exc
    if not isinstance(data, dict):
        raise AuthenticationError("Invalid token: its payload is not a JSON object.")
    return data


def owner_name(home: Path) -> tuple[str, str]:
    """(username, tenant) of the owner of this home."""
    claims = _unverified_claims(ensure_owner_token(home))
    return str(claims.get("tapis/username", "owner")), str(claims.get("tapis/tenant_id", "DEV"))


# -- users (database) ------------------------------------------------------------------------------


def _normalize_role(role: str) -> str:
    role = role.strip().lower()
    if role not in ROLES:
        raise UserError(f"Unknown role {role!r}; use one of: {', '.join(ROLES)}.")
    return role


def add_user(home: Path, username: str, role: str = USER, tenant: str = "DEV",
             ttl_s: float = USER_TTL_S) -> str:
    """Create a user and return its token. The database must be connected (store.db.connect)."""
    from lightabaco.store.sharing import User

    role = _normalize_role(role)
    if not USERNAME_RE.match(username) or username in RESERVED_USERNAMES:
        raise UserError(f"Invalid user name {username!r}: use 1-64 letters, digits, '_', '.', '@' or '-', "
                        "not starting with '.', '@' or '-' (ABACO_WORLD and cron are reserved).")
    if username == owner_name(home)[0]:
        raise UserError(f"{username!r} is the owner of this server; its token is in {Path(home) / TOKEN_FILE}.")
    if User.select().where((User.tenant == tenant) & (User.username == username)).exists():
        raise UserError(f"User {username!r} already exists in tenant {tenant}; `lightabaco users token "
                        f"{username}` issues them a new token (and re-enables them if revoked).")
    jti = secrets.token_hex(12)
    try:
        User.create(tenant=tenant, username=username, roles=role, token_id=jti, create_time=time.time())
    except peewee.IntegrityError:  # created concurrently by another request or command
        raise UserError(f"User {username!r} already exists in tenant {tenant}; `lightabaco users token "
                        f"{username}` issues them a new token.") from None
    return _encode(home, _claims(username, tenant, "user", ttl_s, jti=jti))


def issue_token(home: Path, username: str, tenant: str = "DEV", ttl_s: float = USER_TTL_S,
                role: str | None = None) -> str:
    """A new token for an existing (possibly revoked) user; earlier tokens stop working."""
    from lightabaco.store.sharing import User

    user = User.get_or_none((User.tenant == tenant) & (User.username == username))
    if user is None:
        raise UserError(f"No user {username!r} in tenant {tenant}; create it with `lightabaco users add {username}`.")
    user.token_id = secrets.token_hex(12)
    user.revoked = False
    if role:
        user.roles = _normalize_role(role)
    user.save()
    return _encode(home, _claims(username, tenant, "user", ttl_s, jti=user.token_id))


def revoke_user(username: str, tenant: str = "DEV") -> None:
    from lightabaco.store.sharing import User

    count = (User.update(revoked=True, token_id="")
             .where((User.tenant == tenant) & (User.username == username)).execute())
    if not count:
        raise UserError(f"No user {username!r} in tenant {tenant}; `lightabaco users list` shows who exists.")


def list_users(tenant: str | None = None) -> list[dict[str, Any]]:
    """Every user, or only those of one tenant."""
    from lightabaco.store.sharing import User

    q = User.select().order_by(User.tenant, User.username)
    if tenant is not None:
        q = q.where(User.tenant == tenant)
    return [{"username": u.username, "tenant": u.tenant, "roles": u.roles.split(","),
             "revoked": u.revoked, "create_time": u.create_time} for u in q]


# -- actor tokens ------------------------------------------------------------------------------------


def mint_actor_token(services: Any, username: str, tenant: str, ttl_s: float) -> str:
    """A short-lived token for `_abaco_access_token`: acts as the actor's owner, with the owner's roles."""
    home = Path(services.settings.home)
    authn = get_authenticator(services)
    roles = sorted(authn.roles_of(username, tenant))
    return _encode(home, _claims(username, tenant, "actor", ttl_s, roles=roles))


# -- verification ------------------------------------------------------------------------------------


@dataclass
class _OwnerCache:
    mtime_ns: int = -1
    token: str = ""
    username: str = "owner"
    tenant: str = "DEV"


class Authenticator:
    """Turns request credentials into an Identity. One per home; safe to share between threads."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.home = Path(settings.home)
        self._owner = _OwnerCache()
        self._lock = threading.Lock()
        self._key: bytes | None = None
        # token → (valid until, identity): lets the middleware skip the database (and the threadpool
        # hop) for a token it checked less than CACHE_S ago. Revocation from another process
        # (`lightabaco users revoke`) therefore takes up to CACHE_S to bite; from this one, at once.
        self._verified: dict[str, tuple[float, Identity]] = {}

    # the owner token file is re-read when it changes (rotation takes effect without a restart)
    def owner(self) -> _OwnerCache:
        path = self.home / TOKEN_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -2
        if mtime != self._owner.mtime_ns:
            with self._lock:
                token = ensure_owner_token(self.home, getattr(self.settings, "tenant", "DEV"))
                claims = _unverified_claims(token)
                self._owner = _OwnerCache(path.stat().st_mtime_ns, token,
                                          str(claims.get("tapis/username", "owner")),
                                          str(claims.get("tapis/tenant_id", "DEV")))
        return self._owner

    def key(self) -> bytes:
        if self._key is None:
            self._key = signing_key(self.home)
        return self._key

    def owner_identity(self, via: str = "token", api_server: str = "") -> Identity:
        owner = self.owner()
        return Identity(username=owner.username, tenant=owner.tenant, roles=frozenset({ADMIN}),
                        via=via, api_server=api_server, instance_owner=True)

    def roles_of(self, username: str, tenant: str) -> frozenset[str]:
        owner = self.owner()
        if username == owner.username and tenant == owner.tenant:
            return frozenset({ADMIN})
        try:
            from lightabaco.store.sharing import User

            user = User.get_or_none((User.tenant == tenant) & (User.username == username))
        except Exception:  # no database bound (unit use): a plain user
            user = None
        if user is None or user.revoked:
            return frozenset({USER})
        return frozenset(r for r in user.roles.split(",") if r)

    def cached(self, token: str, api_server: str = "") -> Identity | None:
        hit = self._verified.get(token)
        if hit is None or hit[0] < time.monotonic():
            return None
        return dataclasses.replace(hit[1], api_server=api_server)

    def forget(self, username: str, tenant: str) -> None:
        """Drop cached verifications of a user (after revoking or re-issuing in this process)."""
        for token, (_, ident) in list(self._verified.items()):
            if ident.username == username and ident.tenant == tenant:
                self._verified.pop(token, None)

    def verify_token(self, token: str, api_server: str = "") -> Identity:
        """Identity for a bearer/X-Tapis-Token credential, or AuthenticationError (401)."""
        identity = self._verify(token, api_server)
        if token != self.owner().token:  # the owner token has its own, database-free fast path
            left = float(_unverified_claims(token).get("exp", 0)) - time.time()
            if len(self._verified) > CACHE_MAX:
                self._verified.clear()
            self._verified[token] = (time.monotonic() + min(CACHE_S, left), identity)
        return identity

    def _verify(self, token: str, api_server: str) -> Identity:
        owner = self.owner()
        if hmac.compare_digest(token.encode(), owner.token.encode()):
            return self.owner_identity("token", api_server)
        try:
            claims = jwt.decode(token, self.key(), algorithms=[ALGORITHM], leeway=0,
                                options={"require": ["exp", "tapis/username", "tapis/tenant_id"]})
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("The token has expired. Ask the server owner for a new one "
                                      "(`lightabaco users token NAME`).") from None
        except jwt.InvalidTokenError:
            raise AuthenticationError("Invalid token: it was not issued by this server. Use the token printed by "
                                      "`lightabaco token` or `lightabaco users add|token NAME`.") from None
        username = str(claims["tapis/username"])
        tenant = str(claims["tapis/tenant_id"])
        kind = claims.get("lightabaco/kind")
        if kind == "owner":  # a signed owner token that is no longer the one in the file: rotated
            raise AuthenticationError("This owner token was replaced; read the current one with `lightabaco token`.")
        if kind == "actor":
            roles = frozenset(claims.get("lightabaco/roles") or [USER])
            if not self.user_active(username, tenant):
                raise AuthenticationError(f"The user {username!r} of this actor token was revoked.")
            return Identity(username=username, tenant=tenant, roles=roles, via="actor-token",
                            api_server=api_server)
        if kind != "user":
            raise AuthenticationError("Invalid token: unknown token kind.")
        from lightabaco.store.sharing import User

        user = User.get_or_none((User.tenant == tenant) & (User.username == username))
        if user is None or user.revoked or not hmac.compare_digest(user.token_id, str(claims.get("jti", ""))):
            raise AuthenticationError("This token was revoked or replaced. Ask the server owner for a new one "
                                      "(`lightabaco users token NAME`).")
        return Identity(username=username, tenant=tenant, roles=frozenset(r for r in user.roles.split(",") if r),
                        via="token", api_server=api_server)

    def user_active(self, username: str, tenant: str) -> bool:
        """False only for a registered user who was revoked (the owner is always active)."""
        owner = self.owner()
        if username == owner.username and tenant == owner.tenant:
            return True
        from lightabaco.store.sharing import User

        user = User.get_or_none((User.tenant == tenant) & (User.username == username))
        # Actors of users who were never registered (v2 headers, --auth none) keep working.
        return user is None or not user.revoked


def decode_v2_assertion(headers: Mapping[str, str], api_server: str = "") -> Identity | None:
    """Identity from Abaco v2's `X-Jwt-Assertion-<TENANT>` header, trusting it blindly (dev switch)."""
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith("x-jwt-assertion-"):
            tenant = name[len("x-jwt-assertion-"):].upper()
            break
        if lname == "assertion":
            tenant = "dev_staging"
            break
    else:
        return None
    claims = _unverified_claims(value)
    enduser = str(claims.get("http://wso2.org/claims/enduser") or claims.get("tapis/username") or "")
    username = enduser.split("@")[0]
    if not username:
        raise AuthenticationError("The X-Jwt-Assertion token has no http://wso2.org/claims/enduser claim.")
    raw_roles = claims.get("http://wso2.org/claims/role") or ""
    if isinstance(raw_roles, str):
        raw_roles = raw_roles.split(",")
    roles = {V2_ROLE_MAP[r.strip()] for r in raw_roles if r.strip() in V2_ROLE_MAP} or {USER}
    return Identity(username=username, tenant=tenant, roles=frozenset(roles), via="jwt-v2", api_server=api_server)


_AUTHENTICATORS: dict[str, Authenticator] = {}
_AUTH_LOCK = threading.Lock()


def get_authenticator(services: Any) -> Authenticator:
    """The Authenticator of this services container (cached per home)."""
    home = str(Path(services.settings.home))
    found = _AUTHENTICATORS.get(home)
    if found is None or found.settings is not services.settings:
        with _AUTH_LOCK:
            found = _AUTHENTICATORS[home] = Authenticator(services.settings)
    return found


def warn_if_trusting(settings: Any) -> None:
    """Say loudly that unsigned v2 headers are accepted (call once at start)."""
    if getattr(settings, "trust_v2_jwt", False):
        log.warning("INSECURE: trust_v2_jwt is on -- any X-Jwt-Assertion-* header is accepted WITHOUT a "
                    "signature check, so anyone can act as any user. Use it only to run Abaco's v2 test suite.")


__all__ = [
    "Authenticator", "UserError", "add_user", "decode_v2_assertion", "ensure_owner_token",
    "get_authenticator", "issue_token", "list_users", "mint_actor_token", "owner_name", "revoke_user",
    "rotate_owner_token", "signing_key", "warn_if_trusting",
]
