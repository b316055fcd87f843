"""Which network addresses the server may reach on behalf of an untrusted party (registries, webhooks).

One policy, shared by image pulls and webhook delivery, so "private" means the same everywhere:

    policy = AddressPolicy(allow_private=False, allowed_hosts=parse_hosts("127.0.0.1:5000"))
    addrs = policy.resolve("registry.example.org", 443)   # AddressRefused before any connection
    sock = connect_checked(addrs, timeout=10)               # connects to exactly those addresses

A name is resolved once, every address it resolves to is checked, and the connection goes to the
checked address: a DNS answer cannot change between the check and the connect (no re-resolution).
Refused unless the operator allows them: loopback, link-local (cloud metadata 169.254.169.254),
RFC 1918 and other private ranges, CGNAT (100.64/10), ULA (fc00::/7), multicast, unspecified, reserved,
and the IPv4-mapped / 6to4 / Teredo / NAT64 forms that embed one of those.

Standard library only: the sandbox package is usable on its own, and core imports it from here.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple]]  # socket.getaddrinfo's shape

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class AddressRefused(ValueError):
    """A destination is not allowed by the address policy (the message names the setting to change)."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64): each is checked too."""
    found = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public(ip: IPAddress) -> bool:
    """True only for globally routable unicast addresses (and none of the forms that embed others)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner:
            return all(is_public(v4) for v4 in inner)
        if ip.scope_id:
            return False
    if (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast or ip.is_unspecified
            or ip.is_reserved):
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return False
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return ip.is_global


def parse_hosts(text: str | Iterable[str]) -> frozenset[str]:
    """`"127.0.0.1:5000, registry.lab"` -> {"127.0.0.1:5000", "registry.lab"} (lower case, no blanks)."""
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    return frozenset(i.strip().lower().rstrip(".") for i in items if i and i.strip())


def _host_key(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


@dataclass(frozen=True)
class AddressPolicy:
    """`allow_private`: every address is allowed (the instance owner's own tools, or an operator who says
    so). `allowed_hosts`: hosts the operator named, as `host` (any port) or `host:port` (IPv6 in
    brackets: `[::1]:5000`); they may resolve to private addresses. Everything else must be public."""

    allow_private: bool = False
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    setting_hint: str = "LIGHTABACO_REGISTRY_ALLOWED_HOSTS or LIGHTABACO_REGISTRY_ALLOW_PRIVATE"

    def host_is_allowed(self, host: str, port: int) -> bool:
        """True when the operator named this host (with or without the port)."""
        key = _host_key(host)
        bracketed = f"[{key}]" if ":" in key else key
        return bool({key, bracketed, f"{bracketed}:{port}"} & self.allowed_hosts)

    def check_ip(self, ip: IPAddress, host: str, port: int) -> None:
        if self.allow_private or self.host_is_allowed(host, port) or is_public(ip):
            return
        raise AddressRefused(
            f"{host}:{port} resolves to {ip}, a loopback, link-local, private or otherwise non-public "
            f"address, which this server does not contact for you; the instance owner can allow it "
            f"with {self.setting_hint}")

    def resolve(self, host: str, port: int, resolver: Resolver | None = None) -> list[tuple]:
        """Resolve `host` once and check every address; returns getaddrinfo-style tuples to connect to.

        Refusing when *any* address is not allowed (not just skipping it) keeps a name that mixes a
        public and a private answer from being used to reach the private one."""
        name = _host_key(host)
        try:
            infos = (resolver or socket.getaddrinfo)(name, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise OSError(f"cannot resolve {host} ({exc}); check the name and this host's DNS") from None
        if not infos:
            raise OSError(f"{host} resolves to no address; check the name")
        out = []
        for family, type_, proto, _canon, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]))  # a scoped IPv6 (`%eth0`) keeps its scope
            self.check_ip(ip, host, port)
            out.append((family, type_, proto, sockaddr))
        return out


UNRESTRICTED = AddressPolicy(allow_private=True)


def connect_checked(addrs: Sequence[tuple], timeout: float) -> socket.socket:
    """Connect to the first reachable of `addrs` (as returned by AddressPolicy.resolve): never resolves."""
    last: OSError | None = None
    for family, type_, proto, sockaddr in addrs:
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError("no address to connect to")


# -- HTTP connections to checked addresses ---------------------------------------------------------


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to addresses resolved and checked beforehand (never re-resolves the host name)."""

    def __init__(self, host: str, port: int, addrs: list[tuple], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addrs = addrs

    def connect(self) -> None:
        self.sock = connect_checked(self._addrs, self.timeout)
        if self._tunnel_host:
            self._tunnel()


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addrs: list[tuple], timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._addrs = addrs

    def connect(self) -> None:
        self.sock = connect_checked(self._addrs, self.timeout)
        server_hostname = self.host
        if self._tunnel_host:
            self._tunnel()
            server_hostname = self._tunnel_host
        self.sock = self._context.wrap_socket(self.sock, server_hostname=server_hostname)


class Watchdog:
    """Shuts a connection's socket down when a time limit passes, waking a read blocked in it: the
    overall deadline holds even against a server that trickles one byte per read timeout."""

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn
        self.fired = False
        self._timer: threading.Timer | None = None

    def arm(self, seconds: float) -> None:
        self.cancel()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(OSError, AttributeError):
            self.conn.sock.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
