"""Outbound connections made for untrusted parties (issue 8, items 7 and 11): hostile registries on
loopback (trickling, oversized, redirecting, error bodies), pulls beside executions on a live server,
and webhooks (address policy at registration, a receiver that never answers)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from lightabaco.sandbox import netpolicy
from lightabaco.sandbox.errors import RegistryError
from lightabaco.images import ImageStore
from lightabaco.images.registry import PullLimits, pull_options
from lightabaco.sandbox.netpolicy import AddressPolicy
from tests.fixtures.registry import HostileRegistry, Registry

FAST = PullLimits(deadline_s=6.0, read_timeout_s=2.0, connect_timeout_s=2.0, min_rate_bytes_s=1000,
                  rate_grace_s=1.0)


@pytest.fixture
def only_loopback_traffic(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every connection the client makes is recorded; one to a non-loopback address fails the test
    instead of being made (nothing may ever leave this machine)."""
    seen: list[Any] = []
    real = netpolicy.connect_checked

    def guarded(addrs: Any, timeout: float) -> socket.socket:
        for *_rest, sockaddr in addrs:
            seen.append(sockaddr[0])
            assert ipaddress.ip_address(sockaddr[0]).is_loopback, f"tried to connect to {sockaddr[0]}"
        return real(addrs, timeout)
    monkeypatch.setattr(netpolicy, "connect_checked", guarded)
    return seen


@pytest.fixture
def hostile() -> Iterator[Any]:
    made: list[HostileRegistry] = []

    def make(mode: str, **kw: Any) -> HostileRegistry:
        made.append(HostileRegistry(mode, **kw))
        return made[-1]
    yield make
    for reg in made:
        reg.close()


def strict_for(reg: HostileRegistry) -> AddressPolicy:
    """The policy a server uses when its operator named this one loopback registry (host:port)."""
    return AddressPolicy(allowed_hosts=frozenset({reg.host}))


# -- registries ----------------------------------------------------------------------------------------


def test_trickling_blob_is_abandoned_within_the_deadline(hostile, tmp_path: Path, only_loopback_traffic) -> None:
    reg = hostile("trickle", trickle_s=0.3)  # 4096 bytes at ~3 bytes/s: 20 minutes if we let it
    started = time.monotonic()
    with pull_options(strict_for(reg), FAST), pytest.raises(RegistryError, match="bytes/s|in time") as err:
        ImageStore(tmp_path / "s").pull(reg.ref())
    assert time.monotonic() - started < FAST.deadline_s + 2
    assert reg.host in str(err.value)


def test_trickling_response_head_is_cut_at_the_read_timeout(hostile, tmp_path: Path, only_loopback_traffic) -> None:
    reg = hostile("trickle-head", trickle_s=0.2)  # a byte every 0.2 s never trips a per-read timeout
    started = time.monotonic()
    with pull_options(strict_for(reg), FAST), pytest.raises(RegistryError, match="did not answer in time"):
        ImageStore(tmp_path / "s").pull(reg.ref())
    assert time.monotonic() - started < FAST.read_timeout_s + FAST.connect_timeout_s + 2


def test_blob_larger_than_declared_stops_at_the_declared_size(hostile, tmp_path: Path) -> None:
    reg = hostile("oversize")  # declares 4096 bytes, sends up to 2 GiB
    store = ImageStore(tmp_path / "s")
    started = time.monotonic()
    with pytest.raises(RegistryError, match="more than the 4096 bytes expected"):
        store.pull(reg.ref())
    assert time.monotonic() - started < 5
    time.sleep(0.3)
    # The server got at most what the kernel buffers held before we hung up, not gigabytes.
    assert reg.sent_layer_bytes < 64 << 20, reg.sent_layer_bytes
    leftovers = [p.stat().st_size for p in (tmp_path / "s").rglob("*") if p.is_file() and "partial" in p.name]
    assert all(size <= 4096 for size in leftovers)


def test_manifest_over_the_cap_is_refused(hostile, tmp_path: Path) -> None:
    reg = hostile("huge-manifest")
    with pytest.raises(RegistryError, match="more than the 4194304"):
        ImageStore(tmp_path / "s").pull(reg.ref())
    assert not any("/blobs/" in p for p in reg.requests)


def test_image_over_the_download_cap_is_refused_before_any_layer(hostile, tmp_path: Path) -> None:
    reg = hostile("huge-declared")  # one layer declared at 64 GiB
    with pull_options(limits=PullLimits(max_image_bytes=1 << 30)), \
            pytest.raises(RegistryError, match="more than the 1073741824 bytes one pull may download"):
        ImageStore(tmp_path / "s").pull(reg.ref())
    assert not any(reg.layer_digest in p for p in reg.requests)


@pytest.mark.parametrize("target", ["http://127.0.0.1:{other}/steal", "http://169.254.169.254/latest/meta-data/",
                                    "http://10.1.2.3/internal", "http://[::ffff:127.0.0.1]:{other}/x",
                                    "http://metadata.internal.test/computeMetadata/v1/"])
def test_blob_redirect_to_a_private_address_is_refused_before_connecting(
        hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, only_loopback_traffic: list, target: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.5)
    real_resolve = socket.getaddrinfo

    def resolver(host: str, port: Any, *a: Any, **kw: Any) -> Any:
        if host == "metadata.internal.test":  # a DNS name pointing at the metadata service
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        return real_resolve(host, port, *a, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    try:
        reg = hostile("redirect", redirect_to=target.format(other=listener.getsockname()[1]))
        with pull_options(strict_for(reg), FAST), pytest.raises(RegistryError, match="refused before connecting"):
            ImageStore(tmp_path / "s").pull(reg.ref())
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing ever connected to the other loopback port
    finally:
        listener.close()
    assert set(only_loopback_traffic) == {"127.0.0.1"}  # only the registry we named was contacted


def test_loopback_registry_needs_the_operator_s_permission(hostile, tmp_path: Path, only_loopback_traffic) -> None:
    reg = hostile("ok")
    with pull_options(AddressPolicy(), FAST), pytest.raises(RegistryError, match="REGISTRY_ALLOWED_HOSTS"):
        ImageStore(tmp_path / "s").pull(reg.ref())
    assert reg.requests == [] and only_loopback_traffic == []
    with pull_options(AddressPolicy(allow_private=True), FAST):  # the operator allowed private registries
        with pytest.raises(Exception) as err:  # the layer is random bytes: unpacking fails, the pull worked
            ImageStore(tmp_path / "s").pull(reg.ref())
        assert "refused" not in str(err.value)
    assert any(reg.layer_digest in p for p in reg.requests)


def test_error_bodies_are_never_echoed(hostile, tmp_path: Path) -> None:
    reg = hostile("error")
    with pytest.raises(RegistryError) as err:
        ImageStore(tmp_path / "s").pull(reg.ref())
    text = str(err.value)
    assert "HTTP 500" in text and reg.host in text
    assert HostileRegistry.SECRET.decode() not in text


def test_manifest_requests_do_not_follow_redirects(tmp_path: Path) -> None:
    class Redirector(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None: ...

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RegistryError, match="refusing to follow"):
            ImageStore(tmp_path / "s").pull(f"127.0.0.1:{srv.server_address[1]}/x/y:1")
    finally:
        srv.shutdown()
        srv.server_close()


# -- a live server: pulls never hold execution slots ---------------------------------------------------


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _user(srv: Any, name: str) -> dict[str, str]:
    r = requests.post(f"{srv.url}/actors/admin/users", json={"username": name, "role": "user"},
                      headers=srv.headers(), timeout=10)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['result']['token']}"}


def test_a_trickling_registry_does_not_stop_other_users_messages(server_factory, hostile) -> None:
    reg = hostile("trickle", trickle_s=0.5)
    # One execution slot only: if the pull held it, the other user's messages could never run.
    srv = server_factory(workers=1, registry_allowed_hosts=reg.host, pull_timeout_s=12, pull_read_timeout_s=3)
    mallory, alice = _user(srv, "mallory"), _user(srv, "alice")
    r = requests.post(f"{srv.url}/actors", json={"image": reg.ref()}, headers=mallory, timeout=10)
    assert r.status_code == 200, r.text
    evil = r.json()["result"]["id"]
    _wait(lambda: any("/blobs/" + reg.layer_digest in p for p in reg.requests), 20, "the trickle to start")
    r = requests.post(f"{srv.url}/actors", json={"image": "abacosamples/test"}, headers=alice, timeout=10)
    good = r.json()["result"]["id"]
    started = time.monotonic()
    for i in range(3):
        eid = requests.post(f"{srv.url}/actors/{good}/messages", data={"message": f"m{i}"}, headers=alice,
                            timeout=10).json()["result"]["execution_id"]
        _wait(lambda: requests.get(f"{srv.url}/actors/{good}/executions/{eid}", headers=alice, timeout=10)
              .json()["result"]["status"] == "COMPLETE", 30, f"alice's execution {i}")
    assert time.monotonic() - started < 30
    status = requests.get(f"{srv.url}/actors/{evil}", headers=mallory, timeout=10).json()["result"]
    assert status["status"] != "READY"  # still pulling: the pull and alice's executions ran side by side
    actor = _wait(lambda: (a := requests.get(f"{srv.url}/actors/{evil}", headers=mallory, timeout=10)
                           .json()["result"])["status"] == "ERROR" and a, 40, "the pull to be abandoned")
    assert "Error pulling image" in actor["status_message"] and reg.host in actor["status_message"]
    assert "bytes/s" in actor["status_message"] or "in time" in actor["status_message"]


def test_a_registry_on_loopback_is_refused_unless_the_operator_names_it(server_factory, hostile,
                                                                          registry: Registry) -> None:
    from tests.fixtures.oci import busybox_layout

    reg = hostile("ok")
    registry.push_image(busybox_layout(), "sec/ok", "1")
    srv = server_factory(registry_allowed_hosts=registry.host)
    r = srv.post("/actors", json={"image": reg.ref()})
    assert r.status_code == 200, r.text
    refused = r.json()["result"]["id"]
    actor = srv.wait_actor(refused, "ERROR")
    assert "refused before connecting" in actor["status_message"]
    assert "LIGHTABACO_REGISTRY_ALLOWED_HOSTS" in actor["status_message"]
    assert reg.requests == []  # not one request reached it
    # The registry the operator named works, through the pull pool, for an ordinary actor.
    ok = srv.register(registry.ref("sec/ok", "1"))
    eid = srv.send(ok["id"], "pulled")
    srv.wait_execution(ok["id"], eid)


# -- webhooks -------------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    got: list[float] = []

    def log_message(self, *a: object) -> None: ...

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).got.append(time.monotonic())
        self.send_response(204)
        self.end_headers()


def test_webhook_to_loopback_is_refused_at_registration(server_factory) -> None:
    srv = server_factory()
    for url in ("http://127.0.0.1:9/hook", "http://[::1]:9/x", "http://169.254.169.254/latest/",
                "http://10.0.0.1/x", "http://0.0.0.0:22/"):
        r = srv.post("/actors", json={"image": "abacosamples/test", "webhook": url})
        assert r.status_code == 400, (url, r.text)
        assert "LIGHTABACO_WEBHOOK_ALLOWED_HOSTS" in r.json()["message"]
    # The server's own API stays reachable (Abaco's webhook-to-an-actor-with-a-nonce pattern).
    r = srv.post("/actors", json={"image": "abacosamples/test", "webhook": f"{srv.url}/actors"})
    assert r.status_code == 200, r.text


def test_a_webhook_that_never_answers_does_not_delay_another_owner(server_factory) -> None:
    black_hole = socket.socket()  # accepts connections (the kernel does) and never answers
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)
    _Receiver.got = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        srv = server_factory(webhook_allowed_hosts="127.0.0.1", webhook_timeout_s=15)
        mallory, alice = _user(srv, "mallory"), _user(srv, "alice")
        slow = f"http://127.0.0.1:{black_hole.getsockname()[1]}/never"
        fast = f"http://127.0.0.1:{receiver.server_port}/hook"
        for _ in range(3):  # several hanging destinations' worth of events from one owner
            r = requests.post(f"{srv.url}/actors", json={"image": "abacosamples/test", "webhook": slow},
                              headers=mallory, timeout=10)
            assert r.status_code == 200, r.text
        time.sleep(2.0)  # their ACTOR_READY deliveries are now hanging
        r = requests.post(f"{srv.url}/actors", json={"image": "abacosamples/test", "webhook": fast},
                          headers=alice, timeout=10)
        good = r.json()["result"]["id"]
        ready = _wait(lambda: requests.get(f"{srv.url}/actors/{good}", headers=alice, timeout=10)
                      .json()["result"]["status"] == "READY" and time.monotonic(), 30, "alice's actor")
        got = _wait(lambda: _Receiver.got, 10, "alice's webhook")
        assert got[0] - ready < 3.0, f"alice's webhook waited {got[0] - ready:.1f} s behind the black hole"
    finally:
        receiver.shutdown()
        receiver.server_close()
        black_hole.close()
