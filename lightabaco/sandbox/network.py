"""Per-execution network modes: what an actor's sandbox can reach (issue 11).

    none      its own network namespace with only its own loopback (bwrap --unshare-net)
    api       `none` plus one door: 127.0.0.1:<port> inside the sandbox is relayed to the lightabaco
              API on the host, and nothing else of the host is reachable
    outbound  `api` plus user-mode networking (pasta, from Debian's `passt`) attached to the
              sandbox's namespace: the internet and other machines, never the host's loopback
              (pasta's port forwarding from the namespace to the host is off, and --no-map-gw keeps
              the gateway from standing for the host), its other addresses or link-local ones
              (routes of type "prohibit" put in the namespace before the actor runs)
    host      the host's network namespace (bwrap --share-net)

How the API door works, without any process inside the sandbox and without trusting the image: while
bwrap holds the sandbox's pid 1 on --block-fd, a child of the sandbox helper (helper_server.py) joins
the user namespace that owns the sandbox's network namespace and that network namespace, puts the
prohibit routes in place, creates a TCP socket listening on 127.0.0.1:<port> *there*, hands it to the
monitor over SCM_RIGHTS and exits. A socket stays in the namespace it was created in, so the monitor
(in the host's namespace) accepts the actor's connections on it and connects each one to the API
upstream. The relay adds nothing to the requests: the API authenticates them like any other, so a
made-up token gets 401/403.

Standard library only, like the rest of the sandbox package.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass

MODES = ("none", "api", "outbound", "host")
# Modes that get the API door inside the sandbox.
RELAYED = ("api", "outbound")
# Link-local (cloud metadata at 169.254.169.254) is always refused in `outbound`.
ALWAYS_PROHIBITED = ("169.254.0.0/16",)
# pasta: no port forwarding in either direction (its default `auto` would map every port bound on the
# host's loopback into the namespace), IPv4 only (no IPv6 link-local or ULA surprises), gateway not
# mapped to the host, quiet, in the foreground so that the execution owns it.
PASTA_ARGS = ("-f", "-q", "--config-net", "-4", "--no-map-gw", "-t", "none", "-u", "none",
              "-T", "none", "-U", "none")
READY_TIMEOUT_S = 5.0


class NetworkSetupError(OSError):
    """A network mode could not be put in place; the actor does not run (the message says why)."""


@dataclass(frozen=True)
class ApiRelay:
    """Where the API door of an execution leads.

    upstream: the API as the host reaches it: ("127.0.0.1", 8000), or the path of a Unix socket.
    port: the port the actor connects to on its own 127.0.0.1 (its `_abaco_api_server`)."""

    upstream: tuple[str, int] | str
    port: int = 8000
    max_connections: int = 32  # at once, per execution; more are closed at accept
    idle_timeout_s: float = 300.0  # a connection with no byte either way for this long is closed


def pasta_path() -> str | None:
    return shutil.which("pasta")


def tun_usable() -> bool:
    """pasta opens /dev/net/tun inside the namespace, as the user the sandbox runs as."""
    return os.access("/dev/net/tun", os.R_OK | os.W_OK)


def host_ipv4_addresses() -> list[str]:
    """The host's own IPv4 addresses (all interfaces), from the kernel's local routing table."""
    found: set[str] = set()
    try:
        with open("/proc/net/fib_trie") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for prev, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL":
            addr = prev.strip().split()[-1]
            with contextlib.suppress(ValueError):
                if not ipaddress.ip_address(addr).is_loopback:
                    found.add(addr)
    return sorted(found)


def prohibited_networks(mode: str) -> list[str]:
    """Destinations the sandbox's namespace refuses (route type prohibit: EACCES at connect)."""
    if mode != "outbound":
        return []
    return list(ALWAYS_PROHIBITED) + [f"{a}/32" for a in host_ipv4_addresses()]


# -- the relay ---------------------------------------------------------------------------------------


class _Pair:
    def __init__(self, inside: socket.socket, outside: socket.socket) -> None:
        self.inside, self.outside = inside, outside
        self.last = time.monotonic()

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.outside if sock is self.inside else self.inside

    def close(self) -> None:
        for s in (self.inside, self.outside):
            with contextlib.suppress(OSError):
                s.close()


class RelayServer:
    """Accepts on a listening socket (made in the sandbox's namespace) and relays each connection to
    the upstream API, from one thread. Closing it closes the listener and every connection."""

    def __init__(self, listener: socket.socket, relay: ApiRelay, name: str = "api-relay") -> None:
        self.relay = relay
        self.accepted = 0
        self.refused = 0
        self._listener = listener
        listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pairs: set[_Pair] = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _connect_upstream(self) -> socket.socket:
        up = self.relay.upstream
        if isinstance(up, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: object = up
        else:
            family = socket.AF_INET6 if ":" in up[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            target = up
        try:
            sock.settimeout(5.0)
            sock.connect(target)  # type: ignore[arg-type]
            if not isinstance(up, str):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            raise
        return sock

    def _accept(self) -> None:
        try:
            inside, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if len(self._pairs) >= self.relay.max_connections:
            self.refused += 1
            inside.close()
            return
        try:
            outside = self._connect_upstream()
        except OSError:
            self.refused += 1
            inside.close()  # the actor sees the connection closed, as if the API were down
            return
        inside.setblocking(True)
        inside.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A peer that stops reading must not stall the relay's one thread for long.
        for s in (inside, outside):
            s.settimeout(30.0)
        pair = _Pair(inside, outside)
        self._pairs.add(pair)
        self.accepted += 1
        self._sel.register(inside, selectors.EVENT_READ, pair)
        self._sel.register(outside, selectors.EVENT_READ, pair)

    def _drop(self, pair: _Pair) -> None:
        for s in (pair.inside, pair.outside):
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(s)
        pair.close()
        self._pairs.discard(pair)

    def _pump(self, sock: socket.socket, pair: _Pair) -> None:
        try:
            data = sock.recv(65536)
            if data:
                pair.peer(sock).sendall(data)
                pair.last = time.monotonic()
                return
        except OSError:
            pass
        self._drop(pair)

    def _run(self) -> None:
        try:
            while True:
                for key, _ in self._sel.select(timeout=5.0):
                    if key.data == "wake":
                        return
                    if key.data is None:
                        self._accept()
                    elif key.data in self._pairs:
                        self._pump(key.fileobj, key.data)  # type: ignore[arg-type]
                now = time.monotonic()
                for pair in [p for p in self._pairs if now - p.last > self.relay.idle_timeout_s]:
                    self._drop(pair)
        finally:
            for pair in list(self._pairs):
                self._drop(pair)
            with contextlib.suppress(OSError):
                self._listener.close()
            self._sel.close()
            self._wake_r.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5.0)
        with contextlib.suppress(OSError):
            self._wake_w.close()


# -- attaching a mode to a started sandbox -----------------------------------------------------------


class Attachment:
    """What one execution's network mode keeps alive: the relay and the pasta process."""

    def __init__(self) -> None:
        self.relay: RelayServer | None = None
        self.pasta: subprocess.Popen[bytes] | None = None
        self.setup_ms = 0.0

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.pasta is not None:
            with contextlib.suppress(OSError):
                self.pasta.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.pasta.wait(timeout=5)
            self.pasta = None


def _default_route(pid: int) -> bool:
    with open(f"/proc/{pid}/net/route") as f:
        return any(line.split()[1:2] == ["00000000"] for line in f.read().splitlines()[1:])


def start_pasta(pid: int, user: tuple[int, int] | None) -> subprocess.Popen[bytes]:
    """Attach pasta to the network namespace of `pid` and wait until it has configured it."""
    pasta = pasta_path()
    if pasta is None:
        raise NetworkSetupError("network mode 'outbound' needs pasta: install Debian's `passt` package "
                                "(or choose network 'api' or 'none' for this actor)")
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        import fcntl

        owner = fcntl.ioctl(net, 0xB701)  # NS_GET_USERNS: the user namespace that owns it
    except OSError:
        os.close(net)
        raise
    try:
        proc = subprocess.Popen(
            [pasta, *PASTA_ARGS, "--userns", f"/proc/self/fd/{owner}", "--netns", f"/proc/self/fd/{net}"],
            pass_fds=(net, owner), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, close_fds=True, cwd="/",
            user=user[0] if user else None, group=user[1] if user else None,
            extra_groups=[] if user else None)
    finally:
        os.close(net)
        os.close(owner)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if _default_route(pid):
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                proc.kill()
            err = (proc.communicate(timeout=5)[1] or b"").decode("utf-8", "replace")
            lines = [ln for ln in err.splitlines() if ln.strip() and "to syslog" not in ln]
            hint = " (/dev/net/tun must be readable and writable by the sandbox user: "\
                   "`chmod 0666 /dev/net/tun`, Debian's default)" if not tun_usable() or \
                   any("tun" in ln for ln in lines) else ""
            raise NetworkSetupError("pasta could not attach to the sandbox: " +
                                    (lines[-1] if lines else "no message") + hint)
        time.sleep(0.0005)
