"""Who is calling: the result of authentication, passed to every core service call."""

from __future__ import annotations

from dataclasses import dataclass, field

ADMIN = "admin"
PRIVILEGED = "privileged"
USER = "user"
LIMITED = "limited"
ROLES = (ADMIN, PRIVILEGED, USER, LIMITED)


@dataclass(frozen=True)
class Identity:
    username: str
    tenant: str = "DEV"
    roles: frozenset[str] = field(default_factory=lambda: frozenset({USER}))
    via: str = "token"  # "token", "none", "jwt-v2", "nonce", "actor-token"
    nonce_id: str | None = None  # set when authenticated by ?x-nonce=
    api_server: str = ""  # base URL the caller used, for _links and _abaco_api_server

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    @property
    def is_privileged(self) -> bool:
        return ADMIN in self.roles or PRIVILEGED in self.roles
