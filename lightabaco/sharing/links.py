"""Links between actors (spec §3.9): who may link to whom, and no cycles.

An actor's `link` names another actor (id or alias) that receives its events as messages. Setting it
needs EXECUTE permission on the target (a link is a way to send it messages), may not point at the
actor itself, and may not close a cycle of links. The lifecycle checks this when an actor is registered
or updated; delivering the events is lightabaco.automation.events' job.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Mapping

from lightabaco.sharing import permissions as perms
from lightabaco.protocol.errors import AbacoError, ValidationError
from lightabaco.sharing.identity import Identity
from lightabaco.sandbox.netpolicy import AddressPolicy, AddressRefused, parse_hosts

LINK_UNRESOLVABLE = ("Invalid link parameter; unable to retrieve linked actor data. The link must be a valid "
                     "actor id or alias for which you have EXECUTE permission. ")
LINK_SELF = "Invalid link parameter. An actor cannot link to itself."
LINK_CYCLE = "Error: this update would result in a cycle of linked actors."


def attr(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


# -- links -------------------------------------------------------------------------------------------


def has_cycles(links: Mapping[str, str]) -> bool:
    """True if following `node → links[node]` from any node revisits a node (a self-loop counts)."""
    done: set[str] = set()
    for start in links:
        seen: set[str] = set()
        node: str | None = start
        while node is not None and node in links and node not in done:
            if node in seen:
                return True
            seen.add(node)
            node = links[node]
        done |= seen
    return False


def _resolve(tenant: str, identifier: str) -> str | None:
    """Actor id for an id or alias in the tenant, or None when nothing exists under that name."""
    from lightabaco.sharing.aliases import actor_exists, resolve_actor_id

    try:
        actor_id = resolve_actor_id(None, tenant, identifier)
    except AbacoError:
        return None
    return actor_id if actor_exists(tenant, actor_id) else None


def validate_link(services: Any, identity: Identity, actor: Any, link: str | None) -> str:
    """Check a new `link` value for the actor (None for an actor being registered); returns it."""
    from lightabaco.store.models import Actor

    link = (link or "").strip()
    if not link:
        return ""
    tenant = identity.tenant
    target = _resolve(tenant, link)
    if target is None or not perms.has_level(identity, perms.ACTOR, f"{tenant}_{target}", perms.EXECUTE):
        raise ValidationError(LINK_UNRESOLVABLE)
    actor_id = attr(actor, "id") if actor is not None else None
    if actor_id is None:
        return link  # a new actor has nothing linking to it yet: no cycle is possible
    if target == actor_id:
        raise ValidationError(LINK_SELF)
    graph: dict[str, str] = {}
    for row in Actor.select(Actor.id, Actor.link).where((Actor.tenant == tenant) & (Actor.link != "")):
        resolved = _resolve(tenant, row.link)
        if resolved:
            graph[row.id] = resolved
    graph[actor_id] = target
    if has_cycles(graph):
        raise ValidationError(LINK_CYCLE)
    return link


# -- webhooks: where an actor's events may be sent --------------------------------------------------


def own_api_hosts(settings: Any) -> frozenset[str]:
    """host:port forms of this server's own API: a webhook may always call it (e.g. with a nonce)."""
    port = getattr(settings, "port", 8000)
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"{getattr(settings, 'host', '')}:{port}"}
    public = urllib.parse.urlsplit(getattr(settings, "public_url", "") or "")
    if public.hostname:
        hosts.add(f"{public.hostname}:{public.port or (443 if public.scheme == 'https' else 80)}")
    return parse_hosts(hosts)


def webhook_policy(settings: Any) -> AddressPolicy:
    """The address policy for webhook deliveries (see the `outbound` settings)."""
    return AddressPolicy(allow_private=bool(getattr(settings, "webhook_allow_private", False)),
                         allowed_hosts=parse_hosts(getattr(settings, "webhook_allowed_hosts", "") or "")
                         | own_api_hosts(settings),
                         setting_hint="LIGHTABACO_WEBHOOK_ALLOWED_HOSTS or LIGHTABACO_WEBHOOK_ALLOW_PRIVATE")


def split_webhook(url: str) -> tuple[urllib.parse.SplitResult, str, int]:
    split = urllib.parse.urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"webhook URL {url!r} must start with http:// or https:// and name a host")
    try:
        port = split.port or (443 if split.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"webhook URL {url!r} has an invalid port") from None
    return split, split.hostname, port


def validate_webhook(services: Any, url: str | None) -> str:
    """Check a webhook URL at registration: http(s), and a destination the address policy allows (a name
    that does not resolve yet is accepted: delivery checks again, and retries)."""
    url = (url or "").strip()
    if not url:
        return ""
    try:
        _split, host, port = split_webhook(url)
        webhook_policy(services.settings).resolve(host, port)
    except AddressRefused as exc:
        raise ValidationError(f"Invalid webhook: {exc}") from None
    except ValueError as exc:
        raise ValidationError(f"Invalid webhook: {exc}") from None
    except OSError:
        pass
    return url
