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
    # The instance owner (the owner token, or every caller under --auth none): the only identity whose
    # reach crosses tenants. A user with the admin role administers its own tenant only.
    instance_owner: bool = False

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles

    @property
    def is_privileged(self) -> bool:
        return ADMIN in self.roles or PRIVILEGED in self.roles

    @property
    def is_owner(self) -> bool:
        return self.instance_owner

    def reaches_tenant(self, tenant: str) -> bool:
        """May this caller act on objects of `tenant`? Its own tenant, or any when it is the owner."""
        return self.instance_owner or tenant == self.tenant
