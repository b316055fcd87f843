"""Actor state (spec §2.3): readable always, writable for stateful actors only."""

from __future__ import annotations

from typing import Any

from lightabaco.abaco import actors as actors_mod
from lightabaco.protocol.errors import NotFound, ValidationError
from lightabaco.sharing.identity import Identity
from lightabaco.store.models import Actor

_MISSING = object()


def get_state(services: Any, identity: Identity, identifier: str) -> dict[str, Any]:
    actor = actors_mod.load(services, identity, identifier, "READ")
    return {"state": actor.state}


def set_state(services: Any, identity: Identity, identifier: str, value: Any) -> dict[str, Any]:
    """`value` is the parsed JSON body, or _MISSING/None when the body was not JSON."""
    actor = actors_mod.load(services, identity, identifier, "UPDATE")
    if actor.stateless:
        raise NotFound("actor is stateless.")
    if value is _MISSING or not value:
        raise ValidationError("Invalid actor state description: state must be JSON serializable.")
    Actor.update(state=value).where(Actor.dbid == actor.dbid).execute()
    actor.state = value
    return actors_mod.display(services, identity, actor)


MISSING = _MISSING
