"""Actor configs: named values shared with a list of actors, delivered as `_actor_configs` (spec §2.10).

Secret values are encrypted at rest with a Fernet key kept in `<home>/config.key` (mode 0600) and are
never displayed (not even to the owner: replace them with PUT); actors receive them decrypted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from lightabaco.sharing import permissions as perms
from lightabaco.protocol.fields import field
from lightabaco.protocol.errors import AbacoError, NotFound, ValidationError
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


def _check_actors(tenant: str, actors: str) -> None:
    from lightabaco.store.models import Actor
    from lightabaco.store.sharing import Alias

    for ident in _identifiers(actors):
        found = (Actor.select().where(Actor.dbid == f"{tenant}_{ident}").exists()
                 or Alias.select().where(Alias.key == f"{tenant}_{ident}").exists())
        if not found:
            raise NotFound(f"No actor or alias found with id: {ident}.")


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
    from lightabaco.store.sharing import ActorConfig

    name, value, secret, actors = _parse(fields, need_name=True)
    assert name is not None
    _validate_name(name)
    _check_actors(identity.tenant, actors)
    stored = encrypt(services.settings.home, value) if secret else value
    key = config_key(identity.tenant, name)
    with write_tx():
        if ActorConfig.select().where(ActorConfig.key == key).exists():
            raise ValidationError(f"Config {name} already exists; please choose another name for your config")
        row = ActorConfig.create(key=key, tenant=identity.tenant, name=name, value=stored, is_secret=secret,
                                 actors=actors, owner=identity.username, create_time=time.time())
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
    row = _row(identity, name, perms.UPDATE)
    new_name, value, secret, actors = _parse(fields, need_name=False)
    if new_name not in (None, "", name):
        raise ValidationError("Invalid config update description. The name of a config cannot be changed; "
                              "create a new config instead.")
    _check_actors(identity.tenant, actors)
    row.value = encrypt(services.settings.home, value) if secret else value
    row.is_secret = secret
    row.actors = actors
    row.save()
    return display(row)


def delete_config(services: Any, identity: Identity, name: str) -> None:
    row = _row(identity, name, perms.UPDATE)
    perms.delete_object(perms.CONFIG, row.key)
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
    """{config name: value} of every config listing this actor id or one of its aliases (secrets decrypted)."""
    from lightabaco.store.sharing import ActorConfig, Alias

    rows = list(ActorConfig.select().where(ActorConfig.tenant == tenant))
    if not rows:
        return {}
    names = {actor_id} | {a.name for a in Alias.select(Alias.name)
                          .where((Alias.tenant == tenant) & (Alias.actor_id == actor_id))}
    out: dict[str, str] = {}
    for row in rows:
        if names.intersection(_identifiers(row.actors)):
            out[row.name] = decrypt(services.settings.home, row.value) if row.is_secret else row.value
    return out


__all__ = ["SecretsUnavailable", "actor_configs_for", "create_config", "list_configs"]
