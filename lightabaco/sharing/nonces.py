"""Nonces: capability tokens for one actor or alias, redeemed with `?x-nonce=<id>` (spec §2.8).

Redemption runs as the nonce's creator with the roles they had at creation; normal authorization then
applies. Use counting is one conditional UPDATE per redemption, so concurrent requests can never use a
limited nonce more often than `max_uses`.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from lightabaco.sharing import permissions as perms
from lightabaco.sharing.aliases import alias_row as _alias_row
from lightabaco.protocol.fields import field
from lightabaco.protocol.errors import AbacoError, PermissionDenied, ValidationError
from lightabaco.sharing.identity import Identity
from lightabaco.protocol.serialize import display_time

ACTOR_LEVELS = ("NONE", "READ", "EXECUTE", "UPDATE")
ALIAS_LEVELS = ("NONE", "READ", "EXECUTE")
ALIAS_AND_ACTOR_DENIED = "Not authorized -- you do not have access to this alias and actor."


class NonceError(AbacoError):
    """A nonce could not be redeemed (HTTP 400, Abaco's messages)."""


def _parse_fields(fields: Mapping[str, Any], allowed_levels: tuple[str, ...]) -> tuple[str, int, str]:
    level = field(fields, "level")
    level = "EXECUTE" if level in (None, "") else str(level).upper()
    if level not in allowed_levels:
        raise ValidationError(f"Invalid nonce description. The level attribute must be one of: "
                              f"{allowed_levels}")
    raw = field(fields, "max_uses", "maxUses")
    if raw in (None, ""):
        max_uses = -1
    else:
        try:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            max_uses = int(raw)
        except (TypeError, ValueError):
            raise ValidationError("The max uses parameter must be an integer.") from None
        if max_uses == 0 or max_uses < -1:
            raise ValidationError("The max uses parameter must be a positive integer or -1 (to denote unlimited "
                                  "uses).")
    description = field(fields, "description")
    return level, max_uses, "" if description is None else str(description)


def _create(services: Any, identity: Identity, fields: Mapping[str, Any], *, actor_dbid: str | None,
            alias: str | None, allowed: tuple[str, ...]) -> dict[str, Any]:
    from lightabaco.store.sharing import Nonce

    level, max_uses, description = _parse_fields(fields, allowed)
    row = Nonce.create(
        id=f"{identity.tenant}_{new_nonce_hash()}", tenant=identity.tenant, actor_dbid=actor_dbid, alias_name=alias,
        owner=identity.username, roles=",".join(sorted(identity.roles)) or "user",
        api_server=perms.api_server(services, identity), level=level, max_uses=max_uses, current_uses=0,
        remaining_uses=max_uses, description=description, create_time=time.time(), last_use_time=None)
    return display(services, identity, row)


def new_nonce_hash() -> str:
    """A nonce id is a credential: 64 random bits, Hashids-encoded with Abaco's salt so it looks like
    Abaco's. (Abaco encodes the time part of a uuid1, which can be guessed from the creation time.)"""
    import secrets

    from hashids import Hashids

    from lightabaco.ids import SALT

    return Hashids(salt=SALT).encode(secrets.randbits(64))


def display(services: Any, identity: Identity, row: Any) -> dict[str, Any]:
    actor_id = row.actor_dbid.rsplit("_", 1)[-1] if row.actor_dbid else None
    if row.alias_name:
        self_url = perms.actors_url(services, identity, "aliases", row.alias_name, "nonces", row.id)
        actor_url = perms.actors_url(services, identity, "aliases", row.alias_name)
    else:
        self_url = perms.actors_url(services, identity, actor_id or "", "nonces", row.id)
        actor_url = perms.actors_url(services, identity, actor_id or "")
    out: dict[str, Any] = {
        "id": row.id,
        "actor_id": actor_id,
        "owner": row.owner,
        "roles": [r for r in row.roles.split(",") if r],
        "api_server": row.api_server or perms.api_server(services, identity),
        "level": row.level,
        "max_uses": row.max_uses,
        "current_uses": row.current_uses,
        "remaining_uses": row.remaining_uses,
        "description": row.description,
        "create_time": display_time(row.create_time),
        "last_use_time": display_time(row.last_use_time),
        "_links": {"self": self_url, "owner": perms.owner_url(services, identity, row.owner), "actor": actor_url},
    }
    if row.alias_name:
        out["alias"] = row.alias_name
    return out


# -- actor nonces (the route has resolved the actor and checked that it exists) -------------------------


def create_actor_nonce(services: Any, identity: Identity, actor_dbid: str,
                       fields: Mapping[str, Any]) -> dict[str, Any]:
    perms.require_actor(services, identity, actor_dbid, perms.UPDATE)
    return _create(services, identity, fields, actor_dbid=actor_dbid, alias=None, allowed=ACTOR_LEVELS)


def list_actor_nonces(services: Any, identity: Identity, actor_dbid: str) -> list[dict[str, Any]]:
    from lightabaco.store.sharing import Nonce

    perms.require_actor(services, identity, actor_dbid, perms.READ)
    rows = Nonce.select().where(Nonce.actor_dbid == actor_dbid).order_by(Nonce.create_time)
    return [display(services, identity, r) for r in rows]


def _actor_nonce_row(actor_dbid: str, nonce_id: str) -> Any:
    from lightabaco.store.sharing import Nonce

    row = Nonce.get_or_none((Nonce.id == nonce_id) & (Nonce.actor_dbid == actor_dbid))
    if row is None:
        raise AbacoError("Nonce not found.", 400)
    return row


def get_actor_nonce(services: Any, identity: Identity, actor_dbid: str, nonce_id: str) -> dict[str, Any]:
    perms.require_actor(services, identity, actor_dbid, perms.READ)
    return display(services, identity, _actor_nonce_row(actor_dbid, nonce_id))


def delete_actor_nonce(services: Any, identity: Identity, actor_dbid: str, nonce_id: str) -> None:
    perms.require_actor(services, identity, actor_dbid, perms.UPDATE)
    _actor_nonce_row(actor_dbid, nonce_id).delete_instance()


# -- alias nonces: the caller needs the level on the alias AND on the actor it points to ----------------


def _require_alias_and_actor(identity: Identity, alias: str, level: int) -> Any:
    row = _alias_row(identity.tenant, alias)  # 404 if missing
    ok = (perms.has_level(identity, perms.ALIAS, row.key, level)
          and perms.has_level(identity, perms.ACTOR, f"{row.tenant}_{row.actor_id}", level))
    if not ok:
        raise PermissionDenied(ALIAS_AND_ACTOR_DENIED)
    return row


def create_alias_nonce(services: Any, identity: Identity, alias: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    row = _require_alias_and_actor(identity, alias, perms.UPDATE)
    return _create(services, identity, fields, actor_dbid=None, alias=row.name, allowed=ALIAS_LEVELS)


def list_alias_nonces(services: Any, identity: Identity, alias: str) -> list[dict[str, Any]]:
    from lightabaco.store.sharing import Nonce

    row = _require_alias_and_actor(identity, alias, perms.READ)
    rows = (Nonce.select().where((Nonce.tenant == row.tenant) & (Nonce.alias_name == row.name))
            .order_by(Nonce.create_time))
    return [display(services, identity, r) for r in rows]


def _alias_nonce_row(tenant: str, alias: str, nonce_id: str) -> Any:
    from lightabaco.store.sharing import Nonce

    row = Nonce.get_or_none((Nonce.id == nonce_id) & (Nonce.tenant == tenant) & (Nonce.alias_name == alias))
    if row is None:
        raise AbacoError("Nonce not found.", 400)
    return row


def get_alias_nonce(services: Any, identity: Identity, alias: str, nonce_id: str) -> dict[str, Any]:
    row = _require_alias_and_actor(identity, alias, perms.READ)
    return display(services, identity, _alias_nonce_row(row.tenant, row.name, nonce_id))


def delete_alias_nonce(services: Any, identity: Identity, alias: str, nonce_id: str) -> None:
    row = _require_alias_and_actor(identity, alias, perms.UPDATE)
    _alias_nonce_row(row.tenant, row.name, nonce_id).delete_instance()


# -- redemption --------------------------------------------------------------------------------------


def redeem(nonce_id: str, *, actor_dbid: str | None, alias: str | None, level: int,
           api_server: str = "", now: float | None = None) -> Identity:
    """Check a nonce against the object in the path and the level the request needs, then use it once.

    `actor_dbid` is the resolved actor of the path; `alias` the alias name when the path used one.
    """
    from lightabaco.store.sharing import Nonce

    row = Nonce.get_or_none(Nonce.id == nonce_id)
    if row is None or not (
            (row.actor_dbid is not None and row.actor_dbid == actor_dbid)
            or (row.alias_name is not None and alias is not None and row.alias_name == alias)):
        raise NonceError("Nonce does not exist.")
    if perms.LEVELS[row.level] < level:
        raise NonceError("Nonce does not have sufficient permissions level.")
    if not _owner_active(row.owner, row.tenant):
        raise NonceError("The user who made this nonce was revoked, so it no longer works; ask the actor's "
                         "owner for a new nonce.")
    stamp = time.time() if now is None else now
    query = Nonce.update(current_uses=Nonce.current_uses + 1, last_use_time=stamp)
    if row.max_uses == -1:
        used = query.where(Nonce.id == nonce_id).execute()
    else:
        used = (Nonce.update(current_uses=Nonce.current_uses + 1, remaining_uses=Nonce.remaining_uses - 1,
                             last_use_time=stamp)
                .where((Nonce.id == nonce_id) & (Nonce.remaining_uses > 0)).execute())
    if not used:
        raise NonceError("No remaining uses left for this nonce.")
    roles = frozenset(r for r in row.roles.split(",") if r)
    return Identity(username=row.owner, tenant=row.tenant, roles=roles, via="nonce", nonce_id=row.id,
                    api_server=api_server)


def _owner_active(username: str, tenant: str) -> bool:
    from lightabaco.store.sharing import User

    user = User.get_or_none((User.tenant == tenant) & (User.username == username))
    return user is None or not user.revoked


def nonce_tenant(nonce_id: str) -> str:
    """Abaco recovers the tenant from the nonce id: everything before the last underscore."""
    if "_" not in nonce_id:
        raise NonceError("Nonce does not exist.")
    return nonce_id.rsplit("_", 1)[0]


__all__ = ["NonceError", "create_actor_nonce", "create_alias_nonce", "redeem"]
