"""Events, links and webhooks (spec §3.9, §8).

`emit()` is called by the service at ACTOR_READY, ACTOR_ERROR and EXECUTION_COMPLETE. Events are only
produced for actors with a `link` or a `webhook`:
- link: the event becomes a JSON message on the linked actor (executor "Abaco Event");
- webhook: a row in the `sharing_event_delivery` table, POSTed by a delivery thread in the server
  process, retried with exponential backoff when the receiver fails, and kept across restarts.
Emitting never raises: a broken link or webhook must not break the execution that produced the event.

Webhook URLs are chosen by API users, so they are held to the outbound address policy
(`sandbox/netpolicy.py`): checked when the actor is registered (400) and again, after resolution, when
delivering, connecting to the checked address. The server's own API is always allowed (Abaco's
webhook-to-an-actor-with-a-nonce pattern). Deliveries run in a bounded pool, one at a time per
destination and at most a few per actor owner, each within a connect and a total timeout: a webhook
that never answers only delays its own destination's queue.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from lightabaco.sharing import permissions as perms
from lightabaco.protocol.serialize import display_time
from lightabaco.sandbox.netpolicy import AddressPolicy, PinnedHTTPConnection, PinnedHTTPSConnection, Watchdog
# Who may link to whom (validate_link, has_cycles) and where webhooks may go are sharing rules:
# lightabaco.sharing.links.
from lightabaco.sharing.links import _resolve, attr as _attr, split_webhook, webhook_policy

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
CONNECT_TIMEOUT_S = 3.0
MAX_ANSWER_BYTES = 64 << 10  # what is read (and thrown away) of a receiver's answer

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


def post_json(url: str, payload: str, timeout: float = POST_TIMEOUT_S, *, policy: AddressPolicy | None = None,
              connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    """POST a JSON document to an address `policy` allows (default: public addresses only), within
    `timeout` in total; raises ValueError (never worth retrying: bad URL, refused address), or OSError
    for a failure or a non-2xx answer. Redirects are not followed; the answer's body is not repeated."""
    split, host, port = split_webhook(url)
    addrs = (policy or AddressPolicy()).resolve(host, port)  # AddressRefused is a ValueError
    started = time.monotonic()
    conn: Any
    if split.scheme == "https":
        conn = PinnedHTTPSConnection(host, port, addrs, min(connect_timeout, timeout), ssl.create_default_context())
    else:
        conn = PinnedHTTPConnection(host, port, addrs, min(connect_timeout, timeout))
    dog = Watchdog(conn)
    dog.arm(timeout)  # a receiver that trickles its answer is cut off too, not just a silent one
    path = (split.path or "/") + (f"?{split.query}" if split.query else "")
    try:
        conn.connect()
        conn.sock.settimeout(max(timeout - (time.monotonic() - started), 0.01))
        conn.request("POST", path, body=payload.encode(),
                     headers={"Content-Type": "application/json", "User-Agent": "lightabaco-webhook"})
        response = conn.getresponse()
        response.read(MAX_ANSWER_BYTES)
        status = response.status
    except OSError as exc:
        if dog.fired or isinstance(exc, TimeoutError):  # the socket's own timeout may fire first
            raise TimeoutError(f"{split.netloc} did not answer within {timeout:g} s") from None
        raise OSError(f"{split.netloc}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # http.client's protocol errors
        if dog.fired:
            raise TimeoutError(f"{split.netloc} did not answer within {timeout:g} s") from None
        raise OSError(f"{split.netloc} sent an answer that is not HTTP ({type(exc).__name__})") from None
    finally:
        dog.cancel()
        conn.close()
    if not 200 <= status < 300:
        raise OSError(f"{split.netloc} answered HTTP {status}")


class _Dispatcher:
    """Runs deliveries in a bounded pool: one task per destination at a time, a few per actor owner."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None
        self.size = 0
        self.busy: set[str] = set()
        self.owner_load: Counter[str] = Counter()

    def executor(self, size: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.pool is None or self.size != size:
                self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="lightabaco-webhook")
                self.size = size
            return self.pool

    def take(self, destination: str, owner: str, per_owner: int) -> bool:
        with self.lock:
            if destination in self.busy or self.owner_load[owner] >= per_owner:
                return False
            self.busy.add(destination)
            self.owner_load[owner] += 1
            return True

    def release(self, destination: str, owner: str) -> None:
        with self.lock:
            self.busy.discard(destination)
            self.owner_load[owner] -= 1
            if self.owner_load[owner] <= 0:
                del self.owner_load[owner]


_DISPATCH = _Dispatcher()


def _destination(url: str) -> str:
    """Deliveries to one scheme://host:port queue behind each other, and only behind each other."""
    try:
        split, host, port = split_webhook(url)
        return f"{split.scheme}://{host.lower()}:{port}"
    except ValueError:
        return url


def _owners(dbids: set[str]) -> dict[str, str]:
    from lightabaco.store.models import Actor

    rows = Actor.select(Actor.dbid, Actor.tenant, Actor.owner).where(Actor.dbid.in_(list(dbids)))
    return {r.dbid: f"{r.tenant}/{r.owner}" for r in rows}


def _default_sender(services: Any) -> Callable[[str, str], None]:
    settings = services.settings
    policy = webhook_policy(settings)
    timeout = float(getattr(settings, "webhook_timeout_s", POST_TIMEOUT_S))
    connect = float(getattr(settings, "webhook_connect_timeout_s", CONNECT_TIMEOUT_S))

    def send(url: str, payload: str) -> None:
        post_json(url, payload, timeout, policy=policy, connect_timeout=connect)
    return send


def _deliver_group(rows: list[Any], sender: Callable[[str, str], None], stamp: float) -> int:
    """Deliver one destination's claimed rows in order; after a failure the rest wait for the next pass
    (unattempted), so a dead receiver costs one timeout per pass, not one per queued event."""
    from lightabaco.store.sharing import EventDelivery

    delivered = 0
    for i, row in enumerate(rows):
        try:
            sender(row.url, row.payload)
        except Exception as exc:  # any failure is retried later with backoff
            attempts = row.attempts + 1
            # a URL that can never work (not http/https, a refused address) is not worth retrying
            failed = attempts >= MAX_ATTEMPTS or isinstance(exc, ValueError)
            (EventDelivery.update(attempts=attempts, last_error=str(exc)[:500],
                                  next_attempt=stamp + backoff(attempts),
                                  status="failed" if failed else "pending")
             .where(EventDelivery.id == row.id).execute())
            log.warning("webhook %s for actor %s failed (attempt %d/%d): %s", _destination(row.url),
                        row.actor_dbid, attempts, MAX_ATTEMPTS, exc)
            for rest in rows[i + 1:]:
                EventDelivery.update(next_attempt=stamp + backoff(1)).where(EventDelivery.id == rest.id).execute()
            break
        else:
            EventDelivery.delete().where(EventDelivery.id == row.id).execute()
            delivered += 1
    return delivered


def deliver_due(services: Any, now: float | None = None, limit: int = 200,
                sender: Callable[[str, str], None] | None = None, wait: bool = True) -> int:
    """Start every pending delivery whose time has come, one task per destination in a bounded pool.

    With `wait` (tests, the default) it returns how many succeeded; the delivery thread does not wait,
    so a destination that never answers holds only its own task while the others go out."""
    from lightabaco.store.sharing import EventDelivery

    stamp = time.time() if now is None else now
    settings = services.settings
    size = max(1, int(getattr(settings, "webhook_concurrency", 8)))
    per_owner = max(1, size // 4)
    send = sender or _default_sender(services)
    rows = list(EventDelivery.select()
                .where((EventDelivery.status == "pending") & (EventDelivery.next_attempt <= stamp))
                .order_by(EventDelivery.id).limit(limit))
    groups: OrderedDict[str, list[Any]] = OrderedDict()
    for row in rows:
        groups.setdefault(_destination(row.url), []).append(row)
    owners = _owners({r.actor_dbid for r in rows}) if rows else {}
    pool = _DISPATCH.executor(size)
    futures: list[Future[int]] = []
    for destination, group in groups.items():
        owner = owners.get(group[0].actor_dbid, group[0].actor_dbid)
        if not _DISPATCH.take(destination, owner, per_owner):
            continue  # this destination (or owner) is still busy: its rows wait, the others go
        claimed = []
        for row in group:
            # Claim the row first (several processes may run delivery threads); a claim that is never
            # settled, because its process died, expires and the row is delivered again (at-least-once).
            if (EventDelivery.update(next_attempt=stamp + CLAIM_S)
                    .where((EventDelivery.id == row.id) & (EventDelivery.next_attempt == row.next_attempt)
                           & (EventDelivery.status == "pending")).execute()):
                claimed.append(row)
        if not claimed:
            _DISPATCH.release(destination, owner)
            continue

        def task(claimed: list[Any] = claimed, destination: str = destination, owner: str = owner) -> int:
            try:
                return _deliver_group(claimed, send, stamp)
            finally:
                _DISPATCH.release(destination, owner)
                _WAKE.set()  # its destination's next rows may be due
        futures.append(pool.submit(task))
    if not wait:
        return 0
    return sum(f.result() for f in futures)


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
                deliver_due(self.services, wait=False)
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
