"""Calls into the sharing helper's modules (permissions, aliases, events, cron, configs, tokens).

Those modules are owned elsewhere; while one is missing, the service falls back to the simplest correct
rule (the owner and admins may do everything; no aliases; no events) instead of failing.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any

from lightabaco.core.errors import NotFound, PermissionDenied
from lightabaco.core.identity import Identity

log = logging.getLogger(__name__)
_cache: dict[str, ModuleType | None] = {}


def _module(name: str) -> ModuleType | None:
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(f"lightabaco.core.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lightabaco.core.{name}":
                raise
            _cache[name] = None
    return _cache[name]


def require_actor(services: Any, identity: Identity, actor: Any, level: str) -> None:
    mod = _module("permissions")
    if mod is not None:
        mod.require_actor(services, identity, actor, level)
        return
    if identity.is_admin or actor.owner == identity.username:
        return
    raise PermissionDenied("Not authorized -- you do not have access to this actor.")


def on_actor_created(services: Any, identity: Identity, actor: Any) -> None:
    mod = _module("permissions")
    if mod is not None:
        mod.on_actor_created(services, identity, actor)


def visible_actor_dbids(services: Any, identity: Identity) -> set[str] | None:
    mod = _module("permissions")
    if mod is not None:
        return mod.visible_actor_dbids(services, identity)
    return None


def check_privileged_fields(identity: Identity, fields: set[str]) -> None:
    mod = _module("permissions")
    if mod is not None:
        mod.check_privileged_fields(identity, fields)
        return
    if identity.is_privileged:
        return
    messages = {"privileged": "make privileged actors", "max_workers": "set max workers",
                "max_cpus": "set max CPUs", "mem_limit": "set mem limit", "queue": "set queue"}
    for name, what in messages.items():
        if name in fields:
            raise PermissionDenied(f"Not authorized -- only admins and privileged users can {what}.")


def resolve_actor_id(services: Any, tenant: str, identifier: str) -> str:
    """Alias or id → actor id (display form)."""
    from lightabaco.ids import is_hashid

    mod = _module("aliases")
    if mod is not None:
        return mod.resolve_actor_id(services, tenant, identifier)
    if is_hashid(identifier):
        return identifier
    raise NotFound(f"Actor with identifier '{identifier}' not found")


def cron_validate(schedule: str, now: float) -> str:
    mod = _module("cron")
    if mod is None:
        raise NotImplementedError("cron schedules need lightabaco.core.cron")
    return mod.validate(schedule, now)


def cron_tick(services: Any, now: float) -> int:
    mod = _module("cron")
    return 0 if mod is None else int(mod.tick(services, now) or 0)


def emit(services: Any, actor: Any, event_type: str, **data: Any) -> None:
    """Publish an actor event; an event failure never breaks the caller."""
    mod = _module("events")
    if mod is None:
        return
    try:
        mod.emit(services, actor, event_type, **data)
    except Exception:  # events are best effort, like Abaco's
        log.exception("event %s for actor %s failed", event_type, getattr(actor, "dbid", actor))


def validate_link(services: Any, identity: Identity, actor: Any, link: str) -> None:
    mod = _module("events")
    if mod is not None and link:
        mod.validate_link(services, identity, actor, link)


def actor_configs_for(services: Any, tenant: str, actor_id: str) -> dict[str, str]:
    mod = _module("configs")
    if mod is None:
        return {}
    return mod.actor_configs_for(services, tenant, actor_id)


def mint_actor_token(services: Any, username: str, tenant: str, ttl_s: int) -> str:
    mod = _module("auth")
    if mod is None:
        return ""
    return mod.mint_actor_token(services, username, tenant, ttl_s)


def search(services: Any, identity: Identity, kind: str, query: dict, actor: Any = None) -> Any:
    mod = _module("search")
    if mod is None:
        return None
    return mod.search(services, identity, kind, query, actor=actor)


def on_actor_deleted(services: Any, actor: Any) -> None:
    """Drop the actor's permissions and nonces (the sharing helper may offer a hook)."""
    mod = _module("permissions")
    hook = getattr(mod, "on_actor_deleted", None) if mod is not None else None
    if hook is not None:
        hook(services, actor)
