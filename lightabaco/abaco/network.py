"""The per-actor `network` field: which modes a caller may choose, and what an execution gets.

Modes (lightabaco/sandbox/network.py says how each is built): `none`, `api` (the default: only the
lightabaco API, at the `_abaco_api_server` the execution sees), `outbound` (user-mode networking,
never the host's loopback or link-local addresses), `host` (the host's network; admins only, and
only when the instance allows it).

Instance settings: `network` (the default mode), `network_allowed` (modes non-admin users may
choose), `network_allow_host` (admins may choose `host`). A setting of `network=host` from before
network modes existed keeps meaning what it meant: `host` stays allowed for admins, and actors
registered back then (no stored mode) keep running on the host network.
"""

from __future__ import annotations

import logging
from typing import Any

from lightabaco.protocol.errors import ValidationError
from lightabaco.sandbox.network import MODES, RELAYED, ApiRelay

log = logging.getLogger(__name__)

DEFAULT_INNER_PORT = 8000


def _listed(text: str) -> list[str]:
    return [m.strip().lower() for m in str(text or "").replace(";", ",").split(",") if m.strip()]


def host_allowed(settings: Any) -> bool:
    return bool(settings.network_allow_host) or settings.network == "host"


def allowed_modes(settings: Any, is_admin: bool) -> list[str]:
    """The modes this caller may give an actor, in MODES order."""
    allowed = set(_listed(settings.network_allowed)) & set(MODES)
    allowed.discard("host")
    if is_admin:
        allowed |= {"none", "api", "outbound"} & set(MODES)
        if host_allowed(settings):
            allowed.add("host")
    return [m for m in MODES if m in allowed]


def choose(settings: Any, identity: Any, requested: Any, previous: str | None, prefix: str) -> str:
    """The mode to store for an actor registered (previous None) or replaced by `identity`.

    Omitted: the actor keeps its mode on PUT, or gets the instance default on POST (`api` when the
    default is a mode this caller may not choose). A mode the caller may not choose answers 400
    naming the ones it may."""
    is_admin = bool(getattr(identity, "is_admin", False))
    allowed = allowed_modes(settings, is_admin)
    if requested in (None, ""):
        if previous:
            return previous
        default = settings.network
        return default if default in allowed else ("api" if "api" in allowed else allowed[0] if allowed else "none")
    mode = str(requested).strip().lower()
    if mode not in MODES:
        raise ValidationError(f"{prefix}: network {requested!r} is not a network mode; use one of: "
                              f"{', '.join(allowed)}.")
    if mode == previous:
        return mode  # an admin's host actor stays host when its owner edits other fields
    if mode not in allowed:
        why = " (host networking is for actors registered by an admin, when the instance allows it)" \
            if mode == "host" else " on this instance"
        raise ValidationError(f"{prefix}: network {mode!r} is not allowed{why}; allowed: "
                              f"{', '.join(allowed)}.")
    return mode


def effective(settings: Any, actor: Any) -> str:
    """The mode an actor's executions run with (its own, else the instance default)."""
    mode = getattr(actor, "network", None) or settings.network
    if mode == "host" and not host_allowed(settings):
        # The instance stopped allowing host networking after the actor was registered.
        log.warning("actor %s has network 'host', which this instance no longer allows; running it "
                    "with 'none'", getattr(actor, "dbid", "?"))
        return "none"
    return mode if mode in MODES else "none"


def upstream(settings: Any) -> tuple[str, int] | str:
    """Where the API door leads, as seen from the worker's host."""
    text = str(settings.network_api_upstream or "").strip()
    if text.startswith("/"):
        return text
    if text:
        host, _, port = text.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    host = settings.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host.strip("[]"), int(settings.port)


def exec_network(settings: Any, actor: Any, env: dict[str, Any]) -> dict[str, Any]:
    """ExecSpec fields for one execution; in `api` and `outbound` the actor's `_abaco_api_server`
    becomes the door inside its sandbox (same port as the API when it is a valid port)."""
    mode = effective(settings, actor)
    if mode not in RELAYED:
        return {"network": mode, "api_relay": None}
    port = int(settings.port) if 0 < int(settings.port or 0) < 65536 else DEFAULT_INNER_PORT
    env["_abaco_api_server"] = f"http://127.0.0.1:{port}"
    return {"network": mode, "api_relay": ApiRelay(upstream=upstream(settings), port=port)}
