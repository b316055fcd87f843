"""Actor configs: named values shared with a list of actors, delivered as `_actor_configs` (spec §2.10).

Secret values are encrypted at rest with a Fernet key kept in `<home>/config.key` (mode 0600) and are
never displayed (not even to the owner: replace them with PUT); actors receive them decrypted.

A config reaches the actors it was bound to when written (names resolved to actor ids then; the writer
needs UPDATE on each actor and alias named), never an actor that later takes a freed alias name.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from lightabaco.sharing import permissions as perms
from lightabaco.protocol.fields import field
from lightabaco.protocol.errors import AbacoError, NotFound, PermissionDenied, ValidationError
from lightabaco.sharing.identity import Identity
from lightabaco.store.db import write_tx

KEY_FILE = "config.key"
SECRET_MASK = "********"
RESERVED_NAMES = ("executions", "nonces", "logs", "messages", "adapters", "admin", "utilization")
FORBIDDEN_CHARS = (":", "/", "?", "#", "[", "]", "@", "!", "$", "&", "'", "(", ")", "*", "+", ",", ";", "=", " ")
CONFIG_DENIED = "You do not have sufficient access to this actor config."

_fernets: dict[str, Any] = {}
_lock = threading.Lock()


class SecretsUnavailable(AbacoError):
    code = 500


def _fernet(home: Path) -> Any:
    try:
        from cryptography.fernet import Fernet
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise SecretsUnavailable("Secret configs need the 'cryptography' package; install it with "
                                 "`pip install cryptography` and restart the server.") from None
    with _lock:
        found = _fernets.get(str(home))
        if found is not None:
            return found
        path = Path(home) / KEY_FILE
        try:
            key = path.read_bytes().strip()
        except FileNotFoundError:
            key = b""
        if not key:
            key = Fernet.generate_key()
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(key)
            except FileExistsError:  # another process won the race: use its key
                key = path.read_bytes().strip()
        found = _fernets[str(home)] = Fernet(key)
        return found


def encrypt(home: Path, value: str) -> str:
    return _fernet(home).encrypt(value.encode()).decode()


def decrypt(home: Path, token: str) -> str:
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(home).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretsUnavailable(f"A secret config cannot be decrypted with {Path(home) / KEY_FILE}; the key file "
                                 "was replaced. Set the config's value again with PUT.") from None


def config_key(tenant: str, name: str) -> str:
    return f"{tenant}_{name}"


def _validate_name(name: str) -> None:
    if name in RESERVED_NAMES:
        raise ValidationError(f"{name} is a reserved word. The following reserved words cannot be used for a "
                              f"config name: {', '.join(RESERVED_NAMES)}.")
    for ch in FORBIDDEN_CHARS:
        if ch in name:
            shown = "space" if ch == " " else f"'{ch}'"
            raise ValidationError(f"{shown} is a forbidden character. The following characters cannot be used "
                                  f"for a config name: {' '.join(FORBIDDEN_CHARS)} (space included).")


def _parse(fields: Mapping[str, Any], *, need_name: bool) -> tuple[str | None, str, bool, str]:
    from lightabaco.protocol.fields import boolean

    name = field(fields, "name")
    value = field(fields, "value")
    is_secret = field(fields, "is_secret", "isSecret")
    actors = field(fields, "actors")
    required = [("value", value), ("is_secret", is_secret), ("actors", actors)]
    if need_name:
        required.insert(0, ("name", name))
    missing = [n for n, v in required if v is None or (n != "value" and v == "")]
    if missing:
        raise ValidationError(f"Invalid config description: missing required field(s): {', '.join(missing)}. "
                              "Send name, value, is_secret (true|false) and actors (comma-separated ids or "
                              "aliases).")
    try:
        secret = boolean(is_secret)
    except ValueError:
        raise ValidationError(f"Invalid config description: is_secret must be true or false, not {is_secret!r}.") \
            from None
    return (None if name is None else str(name)), str(value), secret, str(actors)


def _identifiers(actors: str) -> list[str]:
    return [a.strip() for a in actors.split(",") if a.strip()]


def _targets(identity: Identity, actors: str) -> list[tuple[str, str | None]]:
    """Resolve the identifiers a config names to actor dbids (aliases at this moment), requiring the
    caller's UPDATE on each actor and on each alias used: a config puts values into an actor's
    environment, which is changing that actor."""
    from lightabaco.store.sharing import resolve_config_targets

    tenant = identity.tenant
    idents = _identifiers(actors)
    found = resolve_config_targets(tenant, idents)
    if isinstance(found, str):
        raise NotFound(f"No actor or alias found with id: {found}.")
    for ident, (dbid, alias_key) in zip(idents, found):
        if alias_key is not None and not perms.has_level(identity, perms.ALIAS, alias_key, perms.UPDATE):
            raise PermissionDenied(f"Not authorized -- you need UPDATE on alias {ident} (and on its actor) to "
                                   "attach a config to it; ask its owner to share it with you.")
        if not perms.has_level(identity, perms.ACTOR, dbid, perms.UPDATE):
            raise PermissionDenied(f"Not authorized -- you need UPDATE on actor {ident} to attach a config to "
                                   "it; ask its owner to share it with you (POST .../permissions level=UPDATE).")
    return found


def display(row: Any) -> dict[str, Any]:
    return {"name": row.name, "value": SECRET_MASK if row.is_secret else row.value,
            "is_secret": row.is_secret, "actors": row.actors}


def _row(identity: Identity, name: str, level: int) -> Any:
    from lightabaco.store.sharing import ActorConfig

    row = ActorConfig.get_or_none(ActorConfig.key == config_key(identity.tenant, name))
    if row is None:
        raise NotFound(f"Config {name} not found. `GET /actors/configs` lists the configs you can read.")
    perms.require(identity, perms.CONFIG, row.key, level, CONFIG_DENIED)
    return row


def create_config(services: Any, identity: Identity, fields: Mapping[str, Any]) -> dict[str, Any]:
    from lightabaco.store.sharing import ActorConfig, bind_config

    name, value, secret, actors = _parse(fields, need_name=True)
    assert name is not None
    _validate_name(name)
    targets = _targets(identity, actors)
    stored = encrypt(services.settings.home, value) if secret else value
    key = config_key(identity.tenant, name)
    with write_tx():
        if ActorConfig.select().where(ActorConfig.key == key).exists():
            raise ValidationError(f"Config {name} already exists; please choose another name for your config")
        row = ActorConfig.create(key=key, tenant=identity.tenant, name=name, value=stored, is_secret=secret,
                                 actors=actors, owner=identity.username, create_time=time.time())
        bind_config(key, targets)
        perms.delete_object(perms.CONFIG, key)
        perms.set_permission(perms.CONFIG, key, identity.username, perms.UPDATE)
    return display(row)


def list_configs(services: Any, identity: Identity) -> list[dict[str, Any]]:
    from lightabaco.store.sharing import ActorConfig

    rows = ActorConfig.select().where(ActorConfig.tenant == identity.tenant).order_by(ActorConfig.create_time)
    return [display(r) for r in rows if perms.has_level(identity, perms.CONFIG, r.key, perms.READ)]


def get_config(services: Any, identity: Identity, name: str) -> dict[str, Any]:
    return display(_row(identity, name, perms.READ))


def update_config(services: Any, identity: Identity, name: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    from lightabaco.store.sharing import bind_config

    row = _row(identity, name, perms.UPDATE)
    new_name, value, secret, actors = _parse(fields, need_name=False)
    if new_name not in (None, "", name):
        raise ValidationError("Invalid config update description. The name of a config cannot be changed; "
                              "create a new config instead.")
    targets = _targets(identity, actors)
    row.value = encrypt(services.settings.home, value) if secret else value
    row.is_secret = secret
    row.actors = actors
    with write_tx():
        row.save()
        bind_config(row.key, targets)
    return display(row)


def delete_config(services: Any, identity: Identity, name: str) -> None:
    from lightabaco.store.sharing import ConfigBinding

    row = _row(identity, name, perms.UPDATE)
    with write_tx():
        perms.delete_object(perms.CONFIG, row.key)
        ConfigBinding.delete().where(ConfigBinding.config_key == row.key).execute()
        row.delete_instance()


def config_permissions(services: Any, identity: Identity, name: str) -> dict[str, str]:
    row = _row(identity, name, perms.READ)
    return perms.permissions_dict(perms.CONFIG, row.key)


def set_config_permission(services: Any, identity: Identity, name: str,
                          fields: Mapping[str, Any]) -> dict[str, str]:
    row = _row(identity, name, perms.UPDATE)
    user, level = perms.permission_fields(fields)
    return perms.set_permission(perms.CONFIG, row.key, user, level)


def actor_configs_for(services: Any, tenant: str, actor_id: str) -> dict[str, str]:
    """{config name: value} of every config bound to this actor (secrets decrypted).

    Bindings name the actor by its dbid, fixed when the config was written: an alias re-created later by
    someone else, or another actor given a freed name, never receives the config."""
    from lightabaco.store import fast
    from lightabaco.store.sharing import ActorConfig, ConfigBinding

    if not fast.exists(ConfigBinding, "actor_dbid", f"{tenant}_{actor_id}"):
        return {}  # the common case, asked on every execution: skip building the query below
    bound = (ConfigBinding.select(ConfigBinding.config_key)
             .where(ConfigBinding.actor_dbid == f"{tenant}_{actor_id}"))
    rows = (ActorConfig.select().where((ActorConfig.tenant == tenant) & (ActorConfig.key << bound))
            .order_by(ActorConfig.create_time))
    out: dict[str, str] = {}
    for row in rows:
        out[row.name] = decrypt(services.settings.home, row.value) if row.is_secret else row.value
    return out


__all__ = ["SecretsUnavailable", "actor_configs_for", "create_config", "list_configs"]
