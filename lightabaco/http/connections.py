"""Connection-level guards for uvicorn's httptools protocol: nothing an unauthenticated client does
before its request reaches the app may hold a file descriptor or memory for long.

- **Header deadline:** a request line and headers must be complete `header_timeout_s` after the
  connection opened (or after the previous response, for keep-alive connections); else the connection
  is answered 408 and closed. uvicorn's own `timeout_keep_alive` only covers the gap *between* requests:
  a client that sends half a header line and stalls is never closed by it.
- **Body deadline:** the body must be complete `body_timeout_s` after the headers, unless the wait is
  ours (the app has not read what arrived yet: uvicorn paused reading).
- **Connection cap:** beyond `max_connections` open connections, a new one evicts the oldest connection
  that is still waiting for its headers (an idle or stalled client), else is refused with 503. New
  clients are thus served even while a flood of stalled sockets is being timed out.

uvicorn itself keeps at most ~64 KiB of an unread body per connection (it pauses reading beyond that),
so the memory bound of a body is the app's business (see parsing.read_body).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from lightabaco.http.envelope import error_bytes

_STATUS = {408: b"408 Request Timeout", 503: b"503 Service Unavailable"}


def _raw_response(status: int, message: str) -> bytes:
    code, body = error_bytes(message, status)
    head = (b"HTTP/1.1 " + _STATUS[code] + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
    return head + body


def guarded_protocol(max_connections: int, header_timeout_s: float, body_timeout_s: float) -> type:
    """An HttpToolsProtocol subclass enforcing these bounds (one class per server: it keeps the queue
    of connections waiting for headers, oldest first)."""
    waiting: dict["GuardedProtocol", None] = {}  # insertion-ordered: the eviction queue
    header_late = _raw_response(408, f"The request headers were not complete within {header_timeout_s:g} s "
                                "(header_timeout_s); send the whole request at once and retry.")
    full = _raw_response(503, "The server has too many open connections (max_connections); retry in a "
                         "few seconds, and close idle connections you hold.")

    class GuardedProtocol(HttpToolsProtocol):
        _guard_timer: asyncio.TimerHandle | None = None
        _began = False  # some bytes of the current request arrived

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections and not self._evict_oldest():
                transport.write(full)
                transport.close()
                return
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_guard()
            waiting.pop(self, None)
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._began = True
            if self._guard_timer is None:  # a keep-alive connection's next request: its deadline starts now
                self._arm(header_timeout_s, self._headers_late)

        def on_headers_complete(self) -> None:
            waiting.pop(self, None)
            self._arm(body_timeout_s, self._body_late)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._cancel_guard()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.cycle.response_complete:
                # Idle between requests: evictable; uvicorn's keep-alive timer closes it if nothing
                # comes, and the next request's headers get their deadline when they begin.
                self._began = False
                waiting.pop(self, None)
                waiting[self] = None

        # -- the guards ----------------------------------------------------------------------------

        def _await_headers(self) -> None:
            self._began = False
            waiting.pop(self, None)
            waiting[self] = None
            self._arm(header_timeout_s, self._headers_late)

        def _evict_oldest(self) -> bool:
            for victim in waiting:
                if victim is not self:
                    waiting.pop(victim)
                    victim._cancel_guard()
                    victim.transport.close()
                    return True
            return False

        def _arm(self, seconds: float, handler: Any) -> None:
            self._cancel_guard()
            self._guard_timer = self.loop.call_later(seconds, handler)

        def _cancel_guard(self) -> None:
            if self._guard_timer is not None:
                self._guard_timer.cancel()
                self._guard_timer = None

        def _headers_late(self) -> None:
            self._guard_timer = None
            waiting.pop(self, None)
            if not self.transport.is_closing():
                if self._began and (self.cycle is None or self.cycle.response_complete):
                    self.transport.write(header_late)  # a partial request gets told why
                self.transport.close()

        def _body_late(self) -> None:
            self._guard_timer = None
            if self.transport.is_closing():
                return
            if self.flow is not None and self.flow.read_paused:
                self._arm(body_timeout_s, self._body_late)  # the app is slow to read, not the client
                return
            self.transport.close()  # the app sees a disconnect (parsing.read_body answers it)

    return GuardedProtocol
