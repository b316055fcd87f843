"""Events, links and webhooks (spec §3.9, §8).

`emit()` is called by the service at ACTOR_READY, ACTOR_ERROR and EXECUTION_COMPLETE. Events are only
produced for actors with a `link` or a `webhook`:
- link: the event becomes a JSON message on the linked actor (executor "Abaco Event");
- webhook: a row in the `sharing_event_delivery` table, POSTed by a delivery thread in the server
  process, retried with exponential backoff when the receiver fails, and kept across restarts.
Emitting never raises: a broken link or webhook must not break the execution that produced the event.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from lightabaco.sharing import permissions as perms
from lightabaco.protocol.serialize import display_time
# Who may link to whom (validate_link, has_cycles) is a sharing rule: lightabaco.sharing.links.
from lightabaco.sharing.links import _resolve, attr as _attr

log = logging.getLogger(__name__)

ACTOR_READY = "ACTOR_READY"
ACTOR_ERROR = "ACTOR_ERROR"
EXECUTION_COMPLETE = "EXECUTION_COMPLETE"
EVENT_TYPES = (ACTOR_READY, ACTOR_ERROR, EXECUTION_COMPLETE)
EVENT_USER = "Abaco Event"

MAX_ATTEMPTS = 8
CLAIM_S = 60.0
MAX_BACKOFF_S = 300.0
POST_TIMEOUT_S = 10.0

# -- emitting ----------------------------------------------------------------------------------------


def build_event(actor: Any, event_type: str, now: float, **data: Any) -> dict[str, Any]:
    tenant = _attr(actor, "tenant", "")
    link = _attr(actor, "link", "") or ""
    linked = _resolve(tenant, link) if link else None
    stamp = display_time(now)
    event = {
        "tenant_id": tenant,
        "event_type": event_type,
        "event_time_utc": stamp,
        "event_time_display": stamp,
        "actor_id": _attr(actor, "id"),
        "actor_dbid": perms.actor_dbid(actor),
        "_abaco_link": f"{tenant}_{linked}" if linked else "",
        "_abaco_webhook": _attr(actor, "webhook", "") or "",
    }
    if event_type in (ACTOR_READY, ACTOR_ERROR):
        event["status_message"] = data.pop("status_message", _attr(actor, "status_message", ""))
    event.update(data)
    return event


def emit(services: Any, actor: Any, event_type: str, **data: Any) -> None:
    """Publish an event of the actor to its link and webhook (no-op when it has neither)."""
    link = _attr(actor, "link", "") or ""
    webhook = _attr(actor, "webhook", "") or ""
    if not link and not webhook:
        return
    try:
        now = services.now() if hasattr(services, "now") else time.time()
        event = build_event(actor, event_type, now, **data)
        if link:
            _deliver_to_link(services, actor, link, event)
        if webhook:
            _queue_webhook(services, actor, webhook, event, now)
    except Exception:
        log.exception("event %s of actor %s could not be published", event_type, perms.actor_dbid(actor))


def _deliver_to_link(services: Any, actor: Any, link: str, event: dict[str, Any]) -> None:
    from lightabaco.abaco import messages
    from lightabaco.store.models import Actor

    tenant = _attr(actor, "tenant", "")
    target_id = _resolve(tenant, link)
    target = Actor.get_or_none(Actor.dbid == f"{tenant}_{target_id}") if target_id else None
    if target is None:
        log.warning("actor %s links to %r, which no longer exists; event %s dropped",
                    perms.actor_dbid(actor), link, event["event_type"])
        return
    messages.enqueue_for_actor(services, None, target, event, messages.JSON, {}, executor=EVENT_USER,
                               extra_env={"_abaco_username": EVENT_USER})


def _queue_webhook(services: Any, actor: Any, url: str, event: dict[str, Any], now: float) -> None:
    from lightabaco.store.sharing import EventDelivery

    payload = dict(event, _abaco_Content_Type="application/json", _abaco_username=EVENT_USER)
    EventDelivery.create(tenant=_attr(actor, "tenant", ""), actor_dbid=perms.actor_dbid(actor), url=url,
                         payload=json.dumps(payload), next_attempt=now, create_time=now)
    ensure_delivery(services)
    _WAKE.set()


# -- webhook delivery ----------------------------------------------------------------------------------

_WAKE = threading.Event()


def backoff(attempts: int) -> float:
    """Seconds to wait after the n-th failed attempt: 2, 4, 8, ... capped at 5 minutes."""
    return min(2.0 ** attempts, MAX_BACKOFF_S)


def post_json(url: str, payload: str, timeout: float = POST_TIMEOUT_S) -> None:
    """POST a JSON document; raises OSError/HTTPError for any failure or non-2xx answer."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL {url!r} must start with http:// or https://")
    request = urllib.request.Request(url, data=payload.encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "lightabaco-webhook"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - user-set URL
        response.read()


def deliver_due(services: Any, now: float | None = None, limit: int = 20,
                sender: Any = post_json) -> int:
    """Attempt every pending delivery whose time has come; returns how many succeeded."""
    from lightabaco.store.sharing import EventDelivery

    stamp = time.time() if now is None else now
    rows = list(EventDelivery.select()
                .where((EventDelivery.status == "pending") & (EventDelivery.next_attempt <= stamp))
                .order_by(EventDelivery.id).limit(limit))
    delivered = 0
    for row in rows:
        # Claim the row first (several processes may run delivery threads); a claim that is never
        # settled, because its process died, expires and the row is delivered again (at-least-once).
        claimed = (EventDelivery.update(next_attempt=stamp + CLAIM_S)
                   .where((EventDelivery.id == row.id) & (EventDelivery.next_attempt == row.next_attempt)
                          & (EventDelivery.status == "pending")).execute())
        if not claimed:
            continue
        try:
            sender(row.url, row.payload)
        except Exception as exc:  # any failure is retried later with backoff
            attempts = row.attempts + 1
            # a URL that can never work (not http/https) is not worth retrying
            failed = attempts >= MAX_ATTEMPTS or isinstance(exc, ValueError)
            (EventDelivery.update(attempts=attempts, last_error=str(exc)[:500],
                                  next_attempt=stamp + backoff(attempts),
                                  status="failed" if failed else "pending")
             .where(EventDelivery.id == row.id).execute())
            log.warning("webhook %s for actor %s failed (attempt %d/%d): %s", row.url, row.actor_dbid, attempts,
                        MAX_ATTEMPTS, exc)
        else:
            EventDelivery.delete().where(EventDelivery.id == row.id).execute()
            delivered += 1
    return delivered


class DeliveryThread(threading.Thread):
    """Delivers webhooks in the background of the server process; wakes on emit() or every second."""

    def __init__(self, services: Any, interval_s: float = 1.0) -> None:
        super().__init__(name="lightabaco-webhooks", daemon=True)
        self.services = services
        self.interval_s = interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                deliver_due(self.services)
            except Exception:
                log.exception("webhook delivery pass failed; retrying")
            _WAKE.wait(self.interval_s)
            _WAKE.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        _WAKE.set()
        self.join(timeout)


_thread: DeliveryThread | None = None
_thread_lock = threading.Lock()


def start_delivery(services: Any) -> DeliveryThread:
    """Start this process's webhook delivery thread (the server calls it at start to send what a
    previous run left pending); emit() also starts it on demand in whichever process emits."""
    global _thread
    with _thread_lock:
        if _thread is None or not _thread.is_alive():
            _thread = DeliveryThread(services)
            _thread.start()
        return _thread


def resume_pending(services: Any) -> bool:
    """Start the delivery thread here if deliveries are waiting (called from the server's ticker)."""
    from lightabaco.store.sharing import EventDelivery

    if not AUTO_START or (_thread is not None and _thread.is_alive()):
        return False
    if not EventDelivery.select().where(EventDelivery.status == "pending").exists():
        return False
    start_delivery(services)
    return True


# Tests that drive deliver_due() with their own clock turn the on-demand thread off.
AUTO_START = True


def ensure_delivery(services: Any) -> None:
    running = _thread is not None and _thread.is_alive()
    if AUTO_START and not running:
        start_delivery(services)
