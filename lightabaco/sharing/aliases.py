"""Aliases: tenant-scoped names that stand for an actor id anywhere an actor id is accepted (spec §2.9).

Each alias has its own permissions (the creator gets UPDATE) and its own nonces. An identifier that
decodes as an Abaco hashid is an id; anything else is looked up as an alias.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from lightabaco.sharing import permissions as perms
from lightabaco.protocol.errors import NotFound, PermissionDenied, ValidationError
from lightabaco.protocol.fields import field
from lightabaco.sharing.identity import Identity
from lightabaco.store.db import write_tx
from lightabaco.store.sharing import unbind_config_alias

RESERVED_WORDS = ("executions", "nonces", "logs", "messages", "adapters", "admin")
# Route words that shadow /actors/{id} and so can never be aliases either (spec §3.6).
ROUTE_WORDS = ("aliases", "utilization", "search", "configs")
FORBIDDEN_CHARS = ("\\", " ", '"', ":", "/", "?", "#", "[", "]", "@", "!", "$", "&", "'", "(", ")", "*",
                   "+", ",", ";", "=")
ALIAS_DENIED = "Not authorized -- you do not have access to this alias."


def alias_key(tenant: str, alias: str) -> str:
    return f"{tenant}_{alias}"


def is_hashid(identifier: str) -> bool:
    from lightabaco.ids import is_hashid as _is_hashid

    return _is_hashid(identifier)


def actor_exists(tenant: str, actor_id: str) -> bool:
    from lightabaco.store.models import Actor

    return Actor.select().where(Actor.dbid == f"{tenant}_{actor_id}").exists()


def resolve_actor_id(services: Any, tenant: str, identifier: str) -> str:
    """The actor id for an id or alias. Ids are returned as given (the caller checks existence)."""
    if is_hashid(identifier):
        return identifier
    from lightabaco.store.sharing import Alias

    row = Alias.get_or_none(Alias.key == alias_key(tenant, identifier))
    if row is None:
        raise NotFound(f"Actor with identifier '{identifier}' not found")
    return row.actor_id


def validate_alias_name(alias: str) -> None:
    if is_hashid(alias):
        raise ValidationError("Invalid alias description. Alias cannot be an Abaco hash id.")
    if alias in RESERVED_WORDS or alias in ROUTE_WORDS:
        raise ValidationError(f"{alias} is a reserved word. The following reserved words cannot be used for "
                              f"an alias: {', '.join(RESERVED_WORDS + ROUTE_WORDS)}.")
    for ch in FORBIDDEN_CHARS:
        if ch in alias:
            raise ValidationError(f"'{ch}' is a forbidden character. The following characters cannot be used "
                                  f"for an alias: {' '.join(FORBIDDEN_CHARS)} (space included).")


def alias_row(tenant: str, alias: str) -> Any:
    from lightabaco.store.sharing import Alias

    row = Alias.get_or_none(Alias.key == alias_key(tenant, alias))
    if row is None:
        raise NotFound(f"No alias found: {alias}.")
    return row


def require_alias(identity: Identity, alias: str, level: int | str) -> Any:
    """The alias row, after checking the caller's level on it (404 if it does not exist)."""
    row = alias_row(identity.tenant, alias)
    perms.require(identity, perms.ALIAS, row.key, level, ALIAS_DENIED)
    return row


def display(services: Any, identity: Identity, row: Any) -> dict[str, Any]:
    return {
        "alias": row.name,
        "actor_id": row.actor_id,
        "owner": row.owner,
        "_links": {
            "self": perms.actors_url(services, identity, "aliases", row.name),
            "owner": perms.owner_url(services, identity, row.owner),
            "actor": perms.actors_url(services, identity, row.actor_id),
        },
    }


def create_alias(services: Any, identity: Identity, fields: Mapping[str, Any]) -> dict[str, Any]:
    from lightabaco.store.sharing import Alias

    alias = field(fields, "alias")
    actor_id = field(fields, "actor_id", "actorId")
    missing = [n for n, v in (("alias", alias), ("actor_id", actor_id)) if v in (None, "")]
    if missing:
        raise ValidationError(f"Invalid alias description: missing required field(s): {', '.join(missing)}. "
                              "Send alias=<name> and actor_id=<actor id>.")
    alias, actor_id = str(alias), str(actor_id)
    validate_alias_name(alias)
    tenant = identity.tenant
    if not actor_exists(tenant, actor_id):
        raise NotFound(f"No actor found with id: {actor_id}.")
    perms.require(identity, perms.ACTOR, f"{tenant}_{actor_id}", perms.UPDATE,
                  f"Not authorized -- you do not have access to {actor_id}.")
    key = alias_key(tenant, alias)
    with write_tx():
        if Alias.select().where(Alias.key == key).exists():
            raise ValidationError(f"Alias {alias} already exists.")
        row = Alias.create(key=key, tenant=tenant, name=alias, actor_id=actor_id, owner=identity.username,
                           create_time=time.time())
        perms.delete_object(perms.ALIAS, key)  # leftovers of an earlier alias of the same name
        unbind_config_alias(key)  # ...and its config bindings: a new alias never inherits them
        perms.set_permission(perms.ALIAS, key, identity.username, perms.UPDATE)
    return display(services, identity, row)


def list_aliases(services: Any, identity: Identity) -> list[dict[str, Any]]:
    from lightabaco.store.sharing import Alias

    rows = Alias.select().where(Alias.tenant == identity.tenant).order_by(Alias.create_time)
    return [display(services, identity, r) for r in rows]


def get_alias(services: Any, identity: Identity, alias: str) -> dict[str, Any]:
    return display(services, identity, require_alias(identity, alias, perms.READ))


def update_alias(services: Any, identity: Identity, alias: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    row = require_alias(identity, alias, perms.UPDATE)
    if field(fields, "alias") not in (None, ""):
        raise ValidationError("Invalid alias update description. The alias itself cannot be updated in a PUT "
                              "request.")
    actor_id = field(fields, "actor_id", "actorId")
    if actor_id in (None, ""):
        raise ValidationError("Invalid alias update description: the actor_id field is required.")
    actor_id = str(actor_id)
    if not actor_exists(identity.tenant, actor_id):
        raise NotFound(f"No actor found with id: {actor_id}.")
    if not perms.has_level(identity, perms.ACTOR, f"{identity.tenant}_{actor_id}", perms.UPDATE):
        raise PermissionDenied("Not authorized -- you do not have UPDATE access to the actor you want to "
                               "associate with this alias.")
    row.actor_id = actor_id
    row.save()
    return display(services, identity, row)


def delete_alias(services: Any, identity: Identity, alias: str) -> None:
    from lightabaco.store.sharing import Nonce

    row = require_alias(identity, alias, perms.UPDATE)
    with write_tx():
        perms.delete_object(perms.ALIAS, row.key)
        Nonce.delete().where((Nonce.tenant == row.tenant) & (Nonce.alias_name == row.name)).execute()
        # configs attached through this alias stop here: whoever takes the name next must not get them
        unbind_config_alias(row.key)
        row.delete_instance()


def alias_permissions(services: Any, identity: Identity, alias: str) -> dict[str, str]:
    row = require_alias(identity, alias, perms.READ)
    return perms.permissions_dict(perms.ALIAS, row.key)


def set_alias_permission(services: Any, identity: Identity, alias: str,
                         fields: Mapping[str, Any]) -> dict[str, str]:
    row = require_alias(identity, alias, perms.UPDATE)
    user, level = perms.permission_fields(fields)
    return perms.set_permission(perms.ALIAS, row.key, user, level)
