"""The service's calls into the sharing modules (permissions, aliases, events, cron, configs, tokens,
search), in one place: the lifecycle code says *when* (actor created, execution complete...), these
modules say *what* happens then. Event delivery is best effort and never breaks its caller.
"""

from __future__ import annotations

import logging
from typing import Any

from lightabaco.core import aliases, auth, configs, cron, events, permissions
from lightabaco.core import search as search_mod
from lightabaco.core.identity import Identity

log = logging.getLogger(__name__)


def require_actor(services: Any, identity: Identity, actor: Any, level: str) -> None:
    permissions.require_actor(services, identity, actor, level)


def on_actor_created(services: Any, identity: Identity, actor: Any) -> None:
    permissions.on_actor_created(services, identity, actor)


def on_actor_deleted(services: Any, actor: Any) -> None:
    """Drop the actor's permissions and nonces."""
    permissions.on_actor_deleted(services, actor)


def visible_actor_dbids(services: Any, identity: Identity) -> set[str] | None:
    """The actors the caller may list; None means every actor of the tenant."""
    return permissions.visible_actor_dbids(services, identity)


def check_privileged_fields(identity: Identity, fields: dict[str, Any]) -> None:
    """Refuse privileged-only fields (by value: `privileged=false` is allowed to everyone)."""
    permissions.check_privileged_fields(identity, fields)


def resolve_actor_id(services: Any, tenant: str, identifier: str) -> str:
    """Alias or id → actor id (display form); NotFound when neither."""
    return aliases.resolve_actor_id(services, tenant, identifier)


def cron_validate(services: Any, schedule: str, now: float, previous_schedule: str | None = None,
                  previous_next_ex: str | None = None) -> str:
    """The actor's next cron slot (`cron_next_ex`) for a schedule; AbacoError when malformed.

    On a PUT that keeps the schedule, its cadence is kept (a fresh validation would refuse its start
    as "old")."""
    strict = bool(getattr(services.settings, "strict_cron_500", False))
    return cron.revalidate(schedule, now, previous_schedule, previous_next_ex, strict_500=strict)


def cron_tick(services: Any, now: float) -> int:
    return int(cron.tick(services, now) or 0)


def emit(services: Any, actor: Any, event_type: str, **data: Any) -> None:
    """Publish an actor event (links, webhooks); a failure is logged, never raised."""
    try:
        events.emit(services, actor, event_type, **data)
    except Exception:  # events are best effort, like Abaco's
        log.exception("event %s for actor %s failed", event_type, getattr(actor, "dbid", actor))


def validate_link(services: Any, identity: Identity, actor: Any, link: str) -> None:
    if link:
        events.validate_link(services, identity, actor, link)


def validate_webhook(services: Any, url: str | None) -> str:
    """The webhook URL, checked against the outbound address policy (ValidationError names it)."""
    return events.validate_webhook(services, url)


def actor_configs_for(services: Any, tenant: str, actor_id: str) -> dict[str, str]:
    return configs.actor_configs_for(services, tenant, actor_id)


def mint_actor_token(services: Any, username: str, tenant: str, ttl_s: int) -> str:
    return auth.mint_actor_token(services, username, tenant, ttl_s)


def search(services: Any, identity: Identity, kind: str, query: dict, actor: Any = None) -> Any:
    return search_mod.search(services, identity, kind, query, actor=actor)
