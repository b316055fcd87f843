"""Permissions on actors, aliases and configs: NONE < READ < EXECUTE < UPDATE, plus ABACO_WORLD.

A user's level on an object is the higher of their own entry and the ABACO_WORLD entry; admins pass
every check. Failures raise PermissionDenied with Abaco's messages (HTTP 400, spec §1.10).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from lightabaco.protocol.errors import NotFound, PermissionDenied, ValidationError
from lightabaco.protocol.fields import field
from lightabaco.sharing.identity import Identity
from lightabaco.store.db import write_tx

NONE, READ, EXECUTE, UPDATE = 0, 1, 2, 3
LEVELS: dict[str, int] = {"NONE": NONE, "READ": READ, "EXECUTE": EXECUTE, "UPDATE": UPDATE}
LEVEL_NAMES = {v: k for k, v in LEVELS.items()}
WORLD = "ABACO_WORLD"

ACTOR, ALIAS, CONFIG = "actor", "alias", "config"

ACTOR_DENIED = "Not authorized -- you do not have access to this actor."

# Body fields only privileged users may set, with Abaco's message for each (spec §1.10).
PRIVILEGED_FIELDS: list[tuple[tuple[str, ...], str]] = [
    (("privileged",), "Not authorized -- only admins and privileged users can make privileged actors."),
    (("max_workers", "maxWorkers"), "Not authorized -- only admins and privileged users can set max workers."),
    (("max_cpus", "maxCpus"), "Not authorized -- only admins and privileged users can set max CPUs."),
    (("mem_limit", "memLimit"), "Not authorized -- only admins and privileged users can set mem limit."),
    (("queue",), "Not authorized -- only admins and privileged users can set queue."),
]


def level_value(level: str | int) -> int:
    """'READ' → 1 (also accepts ints); ValidationError with Abaco's message otherwise."""
    if isinstance(level, int) and level in LEVEL_NAMES:
        return level
    name = str(level).strip().upper()
    if name not in LEVELS:
        raise ValidationError(f"Invalid permission level: {level}. The valid values are "
                              "('NONE', 'READ', 'EXECUTE', 'UPDATE')")
    return LEVELS[name]


def actor_dbid(actor: Any) -> str:
    """The `{tenant}_{id}` key of an actor given as a model, a dict or the key itself."""
    if isinstance(actor, str):
        return actor
    if isinstance(actor, Mapping):
        found = actor.get("dbid") or actor.get("db_id")
        return str(found) if found else f"{actor['tenant']}_{actor['id']}"
    found = getattr(actor, "dbid", None) or getattr(actor, "db_id", None)
    return str(found) if found else f"{actor.tenant}_{actor.id}"


# -- storage -----------------------------------------------------------------------------------------


def get_level(kind: str, key: str, username: str) -> int:
    from lightabaco.store.sharing import Permission

    rows = (Permission.select(Permission.username, Permission.level)
            .where((Permission.kind == kind) & (Permission.object_key == key)
                   & (Permission.username << [username, WORLD])))
    return max((r.level for r in rows), default=NONE)


def set_permission(kind: str, key: str, username: str, level: str | int) -> dict[str, str]:
    """Upsert one entry (NONE is stored: it acts as a revocation) and return the whole dict."""
    from lightabaco.store.sharing import Permission

    value = level_value(level)
    username = str(username).strip()
    if not username:
        raise ValidationError("Invalid permission description: the user field is required.")
    with write_tx():
        updated = (Permission.update(level=value)
                   .where((Permission.kind == kind) & (Permission.object_key == key)
                          & (Permission.username == username)).execute())
        if not updated:
            Permission.create(kind=kind, object_key=key, username=username, level=value)
    return permissions_dict(kind, key)


def permissions_dict(kind: str, key: str) -> dict[str, str]:
    from lightabaco.store.sharing import Permission

    rows = (Permission.select().where((Permission.kind == kind) & (Permission.object_key == key))
            .order_by(Permission.id))
    return {r.username: LEVEL_NAMES[r.level] for r in rows}


def delete_object(kind: str, key: str) -> None:
    from lightabaco.store.sharing import Permission

    Permission.delete().where((Permission.kind == kind) & (Permission.object_key == key)).execute()


def rename_object(kind: str, old_key: str, new_key: str) -> None:
    from lightabaco.store.sharing import Permission

    Permission.update(object_key=new_key).where(
        (Permission.kind == kind) & (Permission.object_key == old_key)).execute()


# -- checks ------------------------------------------------------------------------------------------


def has_level(identity: Identity, kind: str, key: str, level: str | int) -> bool:
    if identity.is_admin:
        return True
    return get_level(kind, key, identity.username) >= level_value(level)


def require(identity: Identity, kind: str, key: str, level: str | int, message: str) -> None:
    if not has_level(identity, kind, key, level):
        raise PermissionDenied(message)


def require_actor(services: Any, identity: Identity, actor: Any, level: str | int) -> None:
    """Raise PermissionDenied unless the caller holds `level` on the actor (admins always pass)."""
    key = actor_dbid(actor)
    if not key.startswith(f"{identity.tenant}_") and not identity.is_owner:
        # another tenant's actor is invisible, as if it did not exist (to its admins too: only the
        # instance owner crosses tenants)
        raise NotFound(f"Actor with identifier '{key.rsplit('_', 1)[-1]}' not found")
    require(identity, ACTOR, key, level, ACTOR_DENIED)


def on_actor_created(services: Any, identity: Identity, actor: Any) -> None:
    """The creator gets UPDATE on a new actor."""
    owner = getattr(actor, "owner", None) if not isinstance(actor, Mapping) else actor.get("owner")
    set_permission(ACTOR, actor_dbid(actor), owner or identity.username, UPDATE)


def on_actor_deleted(services: Any, actor: Any) -> None:
    """Remove what hangs off a deleted actor: its permissions, nonces, config bindings and the aliases
    pointing to it (with their own config bindings)."""
    from lightabaco.store.sharing import Alias, Nonce, unbind_config_actor, unbind_config_alias

    key = actor_dbid(actor)
    tenant, actor_id = key.rsplit("_", 1)
    delete_object(ACTOR, key)
    Nonce.delete().where(Nonce.actor_dbid == key).execute()
    unbind_config_actor(key)
    for alias in Alias.select().where((Alias.tenant == tenant) & (Alias.actor_id == actor_id)):
        delete_object(ALIAS, alias.key)
        Nonce.delete().where((Nonce.tenant == tenant) & (Nonce.alias_name == alias.name)).execute()
        unbind_config_alias(alias.key)
        alias.delete_instance()


def visible_actor_dbids(services: Any, identity: Identity) -> set[str]:
    """Keys of the actors of the caller's tenant that the caller may read (own, shared or ABACO_WORLD).

    Admins are not special here, as in Abaco: lists show what a user owns or was given.
    """
    from lightabaco.store.sharing import Permission

    prefix = f"{identity.tenant}_"
    rows = (Permission.select(Permission.object_key, Permission.username, Permission.level)
            .where((Permission.kind == ACTOR) & (Permission.object_key.startswith(prefix))
                   & (Permission.username << [identity.username, WORLD])).tuples())  # no model per row
    best: dict[str, int] = {}
    for key, _user, level in rows:
        best[key] = max(best.get(key, NONE), level)
    return {k for k, v in best.items() if v >= READ}


def _truthy(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else None
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)


def check_privileged_fields(identity: Identity, fields: Mapping[str, Any] | Iterable[str]) -> None:
    """Refuse privileged-only fields from callers without the privileged or admin role."""
    if identity.is_privileged:
        return
    data = fields if isinstance(fields, Mapping) else {name: True for name in fields}
    for names, message in PRIVILEGED_FIELDS:
        for name in names:
            if name not in data:
                continue
            value = data[name]
            # `privileged=false` is harmless; any value of the other fields is refused
            if name == "privileged" and not _truthy(value):
                continue
            if name != "privileged" and value in (None, ""):
                continue
            raise PermissionDenied(message)


# -- links (the `_links` of sharing objects) ------------------------------------------------------------


def api_server(services: Any, identity: Identity) -> str:
    """The base URL clients used (or the configured public URL), without a trailing slash."""
    configured = getattr(getattr(services, "settings", None), "public_url", "") or ""
    return (configured or identity.api_server or "").rstrip("/")


def actors_url(services: Any, identity: Identity, *parts: str) -> str:
    base = api_server(services, identity)
    return "/".join([f"{base}/actors", *[p for p in parts if p]])


def owner_url(services: Any, identity: Identity, username: str) -> str:
    return f"{api_server(services, identity)}/profiles/{username}"


def permission_fields(fields: Mapping[str, Any]) -> tuple[str, str]:
    """(user, LEVEL) of a POST to a permissions endpoint (actors, aliases, configs)."""
    user = field(fields, "user")
    level = field(fields, "level")
    if user in (None, ""):
        raise ValidationError("Invalid permission description: the user field is required "
                              "(user=<name>&level=NONE|READ|EXECUTE|UPDATE).")
    if level in (None, ""):
        raise ValidationError("Invalid permission description: the level field is required "
                              "(one of NONE, READ, EXECUTE, UPDATE).")
    level_value(level)
    return str(user), str(level).upper()
