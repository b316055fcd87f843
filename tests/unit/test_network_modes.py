"""Network mode rules (lightabaco/abaco/network.py) and the API relay (lightabaco/sandbox/network.py)."""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import pytest

from lightabaco.abaco import network as net
from lightabaco.protocol.errors import ValidationError
from lightabaco.sandbox.network import ApiRelay, RelayServer, prohibited_networks


def settings(**kw):
    base = dict(network="api", network_allowed="none,api,outbound", network_allow_host=False,
                network_api_upstream="", host="127.0.0.1", port=8123)
    base.update(kw)
    return SimpleNamespace(**base)


USER = SimpleNamespace(is_admin=False)
ADMIN = SimpleNamespace(is_admin=True)


def test_host_is_refused_with_the_allowed_modes_named():
    with pytest.raises(ValidationError, match="allowed: none, api, outbound"):
        net.choose(settings(), USER, "host", None, "Invalid")
    with pytest.raises(ValidationError, match="allowed: none, api, outbound"):
        net.choose(settings(network_allow_host=True), USER, "host", None, "Invalid")
    with pytest.raises(ValidationError):
        net.choose(settings(), ADMIN, "host", None, "Invalid")  # the instance does not allow it
    assert net.choose(settings(network_allow_host=True), ADMIN, "host", None, "Invalid") == "host"
    with pytest.raises(ValidationError, match="allowed: none, api."):
        net.choose(settings(network_allowed="none,api"), USER, "outbound", None, "Invalid")
    with pytest.raises(ValidationError, match="not a network mode"):
        net.choose(settings(), USER, "bridge", None, "Invalid")


def test_defaults_and_put_keeps_the_mode():
    assert net.choose(settings(), USER, None, None, "x") == "api"
    assert net.choose(settings(), USER, None, "outbound", "x") == "outbound"  # PUT without the field
    assert net.choose(settings(network="none"), USER, None, None, "x") == "none"
    # A legacy `network=host` instance: admins' new actors and old actors keep the host network...
    legacy = settings(network="host")
    assert net.choose(legacy, ADMIN, None, None, "x") == "host"
    assert net.effective(legacy, SimpleNamespace(network=None)) == "host"
    # ... a user's new actor gets the safe default instead.
    assert net.choose(legacy, USER, None, None, "x") == "api"
    # host stored, then the instance stopped allowing it: runs with none.
    assert net.effective(settings(), SimpleNamespace(network="host")) == "none"


def test_exec_network_points_the_actor_at_the_door():
    env = {"_abaco_api_server": "https://public.example.org"}
    spec = net.exec_network(settings(host="0.0.0.0"), SimpleNamespace(network="api"), env)
    assert env["_abaco_api_server"] == "http://127.0.0.1:8123"
    assert spec["network"] == "api" and spec["api_relay"].upstream == ("127.0.0.1", 8123)
    env = {"_abaco_api_server": "x"}
    assert net.exec_network(settings(), SimpleNamespace(network="none"), env)["api_relay"] is None
    assert env["_abaco_api_server"] == "x"
    assert net.upstream(settings(network_api_upstream="/run/la.sock")) == "/run/la.sock"
    assert net.upstream(settings(network_api_upstream="[::1]:9000")) == ("::1", 9000)


def test_outbound_prohibits_link_local_and_the_hosts_addresses():
    assert prohibited_networks("api") == []
    out = prohibited_networks("outbound")
    assert "169.254.0.0/16" in out and not any(n.startswith("127.") for n in out)


def test_relay_carries_bytes_both_ways_and_closes():
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(4)

    def echo():
        conn, _ = upstream.accept()
        conn.sendall(b"up:" + conn.recv(100))
        conn.close()

    threading.Thread(target=echo, daemon=True).start()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    relay = RelayServer(listener, ApiRelay(upstream=("127.0.0.1", upstream.getsockname()[1]), port=1))
    try:
        c = socket.create_connection(listener.getsockname(), timeout=5)
        c.sendall(b"hello")
        assert c.recv(100) == b"up:hello"
        c.close()
    finally:
        relay.close()
        upstream.close()
    assert relay.accepted == 1
    with pytest.raises(OSError):
        socket.create_connection(listener.getsockname(), timeout=1)


def test_relay_caps_connections():
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(16)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    relay = RelayServer(listener, ApiRelay(upstream=("127.0.0.1", upstream.getsockname()[1]), port=1,
                                           max_connections=2))
    try:
        conns = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(3)]
        conns[2].settimeout(5)
        assert conns[2].recv(10) == b""  # the third was closed at accept
        assert relay.accepted == 2 and relay.refused == 1
    finally:
        relay.close()
        upstream.close()
