"""The outbound address policy (sandbox/netpolicy.py) with a stub resolver, and webhook delivery:
refused destinations, timeouts, and no head-of-line blocking between destinations."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lightabaco.automation import events
from lightabaco.sharing import links
from lightabaco.protocol.errors import ValidationError
from lightabaco.sandbox import netpolicy
from lightabaco.sandbox.netpolicy import AddressPolicy, AddressRefused, is_public, parse_hosts
from lightabaco.store.sharing import EventDelivery
from tests.fixtures.users import sharing_env  # noqa: F401 - fixture


@pytest.mark.parametrize("addr,public", [
    ("8.8.8.8", True), ("2606:4700::1", True), ("::ffff:8.8.8.8", True),
    ("127.0.0.1", False), ("127.8.9.10", False), ("::1", False), ("0.0.0.0", False), ("::", False),
    ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("224.0.0.251", False), ("255.255.255.255", False), ("fc00::1", False),
    ("fe80::1", False), ("ff02::1", False), ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False),
    ("2002:7f00:1::", False), ("64:ff9b::a9fe:a9fe", False), ("198.18.0.1", False)])
def test_only_public_unicast_addresses_count_as_public(addr: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(addr)) is public


def stub(answers: dict[str, list[str]]) -> Any:
    def resolve(host: str, port: int, *a: Any, **kw: Any) -> list[tuple]:
        out = []
        for ip in answers[host]:
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            out.append((fam, socket.SOCK_STREAM, 6, "", (ip, port) if fam == socket.AF_INET else (ip, port, 0, 0)))
        return out
    return resolve


def test_every_resolved_address_is_checked() -> None:
    dns = stub({"good.example": ["93.184.216.34"], "rebind.example": ["93.184.216.34", "127.0.0.1"],
                "meta.example": ["169.254.169.254"], "mapped.example": ["::ffff:10.0.0.1"]})
    strict = AddressPolicy()
    assert strict.resolve("good.example", 443, dns)[0][3] == ("93.184.216.34", 443)
    for name in ("rebind.example", "meta.example", "mapped.example"):
        with pytest.raises(AddressRefused, match="non-public"):
            strict.resolve(name, 443, dns)
    assert AddressPolicy(allow_private=True).resolve("meta.example", 80, dns)


def test_operator_named_hosts_with_and_without_port() -> None:
    dns = stub({"127.0.0.1": ["127.0.0.1"], "registry.lab": ["10.0.0.5"], "::1": ["::1"]})
    policy = AddressPolicy(allowed_hosts=parse_hosts("127.0.0.1:5000, registry.lab ,[::1]:5000"))
    assert policy.resolve("127.0.0.1", 5000, dns)
    with pytest.raises(AddressRefused):
        policy.resolve("127.0.0.1", 5001, dns)  # another port of loopback is another service
    assert policy.resolve("registry.lab", 443, dns) and policy.resolve("REGISTRY.LAB.", 8443, dns)
    assert policy.resolve("[::1]", 5000, dns)


def test_connection_goes_to_the_checked_address_without_resolving_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TOCTOU: after the check, the connection uses the address, never the name."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    addrs = AddressPolicy(allow_private=True).resolve("127.0.0.1", srv.getsockname()[1])

    def rebinding(*a: Any, **kw: Any) -> Any:
        raise AssertionError("resolved a second time")
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    conn = netpolicy.PinnedHTTPConnection("name.that.would.rebind", srv.getsockname()[1], addrs, 2.0)
    conn.connect()
    assert conn.sock.getpeername()[0] == "127.0.0.1"
    conn.close()
    srv.close()


# -- webhooks ----------------------------------------------------------------------------------------


def test_webhook_registration_refuses_private_destinations(sharing_env) -> None:  # noqa: F811
    services = sharing_env.services
    for url in ("http://127.0.0.1:9/x", "http://localhost:9/x", "http://169.254.169.254/latest/",
                "http://[::ffff:127.0.0.1]/", "http://10.0.0.1/"):
        with pytest.raises(ValidationError, match="WEBHOOK_ALLOWED_HOSTS"):
            links.validate_webhook(services, url)
    with pytest.raises(ValidationError, match="http://"):
        links.validate_webhook(services, "file:///etc/passwd")
    own = f"http://127.0.0.1:{services.settings.port}/actors/x/messages?x-nonce=abc"
    assert links.validate_webhook(services, own) == own
    services.settings.webhook_allowed_hosts = "127.0.0.1:9"
    assert links.validate_webhook(services, "http://127.0.0.1:9/x")


def test_delivery_to_a_refused_address_never_connects(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*a: Any, **kw: Any) -> Any:
        raise AssertionError("connected")
    monkeypatch.setattr(netpolicy, "connect_checked", never)
    with pytest.raises(AddressRefused):
        events.post_json("http://169.254.169.254/latest/meta-data/", "{}")


class _Fast(BaseHTTPRequestHandler):
    got: list[float] = []

    def log_message(self, *a: object) -> None: ...

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append(time.monotonic())
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_silent_webhook_does_not_delay_another_owner_s(sharing_env, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Three events to a receiver that never answers are queued before one to a working receiver, all
    delivered by one process's delivery thread: the working one goes out at once, and the silent
    ones end at the webhook timeout."""
    monkeypatch.setattr(events, "AUTO_START", False)
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    _Fast.got = []
    fast = ThreadingHTTPServer(("127.0.0.1", 0), _Fast)
    threading.Thread(target=fast.serve_forever, daemon=True).start()
    settings = sharing_env.services.settings
    settings.webhook_allowed_hosts = "127.0.0.1"
    settings.webhook_timeout_s = 4.0
    mallory, alice = sharing_env.user("mallory"), sharing_env.user("alice")
    try:
        slow = sharing_env.make_actor(mallory, webhook=f"http://127.0.0.1:{black_hole.getsockname()[1]}/")
        for _ in range(3):
            events.emit(sharing_env.services, slow, events.ACTOR_READY)
        good = sharing_env.make_actor(alice, webhook=f"http://127.0.0.1:{fast.server_port}/")
        events.emit(sharing_env.services, good, events.ACTOR_READY)
        started = time.monotonic()
        thread = events.start_delivery(sharing_env.services)
        try:
            deadline = time.monotonic() + 10
            while not _Fast.got and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _Fast.got and _Fast.got[0] - started < 1.5, "alice's webhook waited behind mallory's"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not EventDelivery.select().where(
                    EventDelivery.attempts > 0).exists():
                time.sleep(0.05)
            row = EventDelivery.select().where(EventDelivery.attempts > 0).first()
            assert row is not None and "did not answer within 4 s" in row.last_error
            assert time.monotonic() - started < 4.0 + 2.0
        finally:
            thread.stop()
    finally:
        fast.shutdown()
        fast.server_close()
        black_hole.close()
