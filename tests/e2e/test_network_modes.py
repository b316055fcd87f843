"""Per-actor network modes through the real server (issue 11): the `api` door carries an actor's own
token (tapipy inside the sandbox sends a message to the next actor of a pipeline) and nothing else of
the host; `outbound` reaches other machines (a network namespace made by this test stands in for the
internet) but never the host's loopback or its other addresses; `none` reaches nothing."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fixtures.samples import SampleImages, server_with_samples
from tests.fixtures.server import LiveServer, free_port, make_home

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROBE = r'''
import json, os, socket, urllib.request, urllib.error
msg = json.loads(os.environ["MSG"])
api = os.environ.get("_abaco_api_server", "")
print("api_server", api)
if msg.get("send_to"):
    from tapipy.tapis import Tapis
    t = Tapis(base_url=api, tenant_id="DEV", access_token=os.environ["_abaco_access_token"],
              download_latest_specs=False)
    sent = t.actors.send_message(actor_id=msg["send_to"], message=msg["text"])
    print("SENT", sent.execution_id)
for host, port in msg.get("connect", []):
    try:
        socket.create_connection((host, port), timeout=3).close()
        print("CONNECT", host, port, "ok")
    except OSError as exc:
        print("CONNECT", host, port, "failed", exc.errno)
if msg.get("forge"):
    req = urllib.request.Request(api + "/actors", headers={"X-Tapis-Token": msg["forge"]})
    try:
        print("FORGE", urllib.request.urlopen(req, timeout=5).status)
    except urllib.error.HTTPError as exc:
        print("FORGE", exc.code)
    except OSError as exc:
        print("FORGE unreachable", exc)
'''


@pytest.fixture(scope="module")
def probe_image(sample_images: SampleImages) -> str:
    """The tapipy sample plus a probe script (a build without RUN: milliseconds)."""
    from lightabaco.build.builder import build

    ctx = Path(make_home("lab-netprobe-ctx-"))
    try:
        (ctx / "probe.py").write_text(PROBE)
        (ctx / "Containerfile").write_text(
            'FROM lightabaco/tapipy_actor\nCOPY probe.py /probe.py\nCMD ["python3", "/probe.py"]\n')
        build(ctx, sample_images.store, cache_dir=sample_images.build_cache, tag="lightabaco/netprobe",
              network="none")
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return "lightabaco/netprobe"


@pytest.fixture(scope="module")
def net_server(sample_images: SampleImages) -> Iterator[LiveServer]:
    with server_with_samples(sample_images, "lab-netmodes-home-") as server:
        yield server


@pytest.fixture
def host_listener() -> Iterator[dict[str, Any]]:
    """A TCP listener on all of the host's addresses (loopback included), counting connections."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    info: dict[str, Any] = {"port": sock.getsockname()[1], "accepted": 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            info["accepted"] += 1
            conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield info
    stop.set()
    t.join()
    sock.close()


def _outbound_possible() -> str:
    from lightabaco.sandbox import network

    if network.pasta_path() is None:
        return "pasta (Debian package passt) is not installed"
    return ""


@pytest.fixture(scope="module")
def tun_for_sandbox_user() -> Iterator[None]:
    """pasta opens /dev/net/tun as the sandbox user. Debian's udev makes it 0666; containers without
    udev leave it 0600 (this VM). As root, restore Debian's mode for the test and put it back after."""
    path = "/dev/net/tun"
    if not os.path.exists(path):
        pytest.skip("/dev/net/tun does not exist here (no tun module)")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    changed = False
    if mode & 0o006 != 0o006:
        if os.geteuid() != 0:
            if not os.access(path, os.R_OK | os.W_OK):
                pytest.skip("/dev/net/tun is not usable by this user (chmod 0666 /dev/net/tun as root)")
        else:
            os.chmod(path, 0o666)
            changed = True
    try:
        yield
    finally:
        if changed:
            os.chmod(path, mode)


def _run(server: LiveServer, actor_id: str, msg: dict[str, Any]) -> str:
    eid = server.send(actor_id, json.dumps(msg))
    ex = server.wait_execution(actor_id, eid, timeout=60)
    logs = server.logs(actor_id, eid)
    assert ex["status"] == "COMPLETE", (ex, logs)
    return logs


def _outcome(logs: str, host: str, port: int) -> str:
    m = re.search(rf"^CONNECT {re.escape(host)} {port} (ok|failed \S+)$", logs, re.M)
    assert m, logs
    return m.group(1)


def test_pipeline_through_the_api_door_with_tapipy(net_server: LiveServer, probe_image: str) -> None:
    """Actor 1 (network left at its default, token: true) sends a message to actor 2 with tapipy, from
    inside its sandbox; the test reads actor 2's result."""
    second = net_server.register("lightabaco/tapipy_actor")
    first = net_server.register(probe_image, token=True)
    assert first["network"] == "api" and second["network"] == "api"
    logs = _run(net_server, first["id"], {"send_to": second["id"], "text": "hello from actor 1"})
    assert f"api_server http://127.0.0.1:{net_server.port}" in logs, logs
    m = re.search(r"^SENT (\S+)$", logs, re.M)
    assert m, logs
    ex = net_server.wait_execution(second["id"], m.group(1), timeout=60)
    assert ex["status"] == "COMPLETE"
    r = net_server.get(f"/actors/{second['id']}/executions/{m.group(1)}/results")
    assert r.status_code == 200
    assert b"message 'hello from actor 1'" in r.content, r.content


@pytest.mark.parametrize("mode", ["api", "outbound"])
def test_door_is_the_api_only_and_needs_real_credentials(net_server: LiveServer, probe_image: str,
                                                         host_listener: dict[str, Any], mode: str,
                                                         request: pytest.FixtureRequest) -> None:
    if mode == "outbound":
        why = _outbound_possible()
        if why:
            pytest.skip(why)
        request.getfixturevalue("tun_for_sandbox_user")
    from lightabaco.sandbox.network import host_ipv4_addresses

    actor = net_server.register(probe_image, network=mode)
    assert actor["network"] == mode
    port = host_listener["port"]
    targets = [["127.0.0.1", port], ["127.0.0.1", 22]] + [[a, port] for a in host_ipv4_addresses()]
    targets.append(["169.254.169.254", 80])
    logs = _run(net_server, actor["id"], {"connect": targets, "forge": "made-up-" + secrets.token_hex(8)})
    for host, p in targets:
        assert _outcome(logs, host, p) != "ok", (host, p, logs)
    assert host_listener["accepted"] == 0
    m = re.search(r"^FORGE (\d+)$", logs, re.M)
    assert m and m.group(1) in ("401", "403"), logs  # the door reached the API, which refused


def test_none_reaches_nothing(net_server: LiveServer, probe_image: str, host_listener: dict[str, Any]) -> None:
    actor = net_server.register(probe_image, network="none")
    port = host_listener["port"]
    targets = [["127.0.0.1", net_server.port], ["127.0.0.1", port], ["198.51.100.7", 80]]
    logs = _run(net_server, actor["id"], {"connect": targets, "forge": "x"})
    for host, p in targets:
        assert _outcome(logs, host, p) != "ok", logs
    assert "FORGE unreachable" in logs and host_listener["accepted"] == 0


@pytest.fixture
def far_server() -> Iterator[tuple[str, int, str]]:
    """An HTTP server inside a network namespace made here (veth pair, private addresses assigned
    inside it): it stands in for another machine on the internet."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("making a network namespace needs root and iproute2")
    name = f"lbnet{secrets.token_hex(3)}"
    host_if, ns_if = f"{name}h", f"{name}n"
    subnet = 200 + secrets.randbelow(50)
    host_ip, far_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    cmds = [["ip", "netns", "add", name],
            ["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
            ["ip", "link", "set", ns_if, "netns", name],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
            ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", name, "addr", "add", f"{far_ip}/30", "dev", ns_if],
            ["ip", "-n", name, "link", "set", ns_if, "up"],
            ["ip", "-n", name, "link", "set", "lo", "up"]]
    proc = None
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True)
        port = free_port()
        proc = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-m", "http.server",
                                 "--bind", far_ip, str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/tmp")
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection((far_ip, port), timeout=1).close()
                break
            assert time.monotonic() < deadline, "the far server did not start"
            time.sleep(0.05)
        yield far_ip, port, host_ip
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_outbound_reaches_another_machine_but_not_the_host(net_server: LiveServer, probe_image: str,
                                                           far_server: tuple[str, int, str],
                                                           host_listener: dict[str, Any],
                                                           tun_for_sandbox_user: None) -> None:
    why = _outbound_possible()
    if why:
        pytest.skip(why)
    far_ip, far_port, host_ip = far_server
    port = host_listener["port"]
    actor = net_server.register(probe_image, network="outbound")
    # The host's end of the veth pair is one of the host's own addresses: refused like loopback.
    targets = [[far_ip, far_port], ["127.0.0.1", port], [host_ip, port]]
    logs = _run(net_server, actor["id"], {"connect": targets})
    assert _outcome(logs, far_ip, far_port) == "ok", logs
    for host, p in targets[1:]:
        assert _outcome(logs, host, p) != "ok", (host, p, logs)
    assert host_listener["accepted"] == 0
    # ... while the same actor in `api` mode cannot reach the far server at all.
    net_server.put(f"/actors/{actor['id']}", json={"image": probe_image, "network": "api"})
    net_server.wait_actor(actor["id"], "READY")
    logs = _run(net_server, actor["id"], {"connect": [[far_ip, far_port]]})
    assert _outcome(logs, far_ip, far_port) != "ok", logs


def test_network_field_rules(net_server: LiveServer) -> None:
    r = net_server.post("/actors", json={"image": "abacosamples/test", "network": "host"})
    assert r.status_code == 400 and "none, api, outbound" in r.json()["message"], r.text
    r = net_server.post("/actors", json={"image": "abacosamples/test", "network": "bridge"})
    assert r.status_code == 400 and "none, api, outbound" in r.json()["message"], r.text
    actor = net_server.register("abacosamples/test", network="outbound", wait_ready=False)
    assert actor["network"] == "outbound"
    r = net_server.put(f"/actors/{actor['id']}", json={"image": "abacosamples/test", "description": "x"})
    assert r.status_code == 200 and r.json()["result"]["network"] == "outbound", r.text
    r = net_server.put(f"/actors/{actor['id']}", json={"image": "abacosamples/test", "network": "none"})
    assert r.json()["result"]["network"] == "none"
    assert net_server.get(f"/actors/{actor['id']}").json()["result"]["network"] == "none"
