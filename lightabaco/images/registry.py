"""A small client for the OCI distribution API v2 (what `docker pull` talks to), standard library only.

Auth: anonymous, HTTP basic, and the bearer-token flow (a 401 with
`WWW-Authenticate: Bearer realm=...,service=...,scope=...` -> GET realm for a token -> retry).
Credentials come from arguments, else `LIGHTABACO_REGISTRY_AUTH` (a docker-style config.json path, or
its JSON inline), else `~/.docker/config.json` (`auths` entries; credential helpers are not run).
`http://` is used only for loopback registries and those marked insecure (after trying https).

Bounds (PullLimits, set per pull with `pull_options`): an overall deadline, a per-read timeout, a
minimum transfer rate, the manifest's declared blob sizes, caps on manifests, configs and the whole
image. Addresses (an AddressPolicy): every connection goes to an address checked after resolution;
only blob GETs follow redirects. Error messages never repeat a response body.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import re
import ssl
import time
import urllib.parse
import urllib.request
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lightabaco.sandbox.errors import ImageError, RegistryAuthError, RegistryError
from lightabaco.sandbox.netpolicy import (UNRESTRICTED, AddressPolicy, AddressRefused, PinnedHTTPConnection,
                                         PinnedHTTPSConnection, Watchdog)
from .oci import DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, OCI_INDEX, OCI_MANIFEST, sha256_digest
from .reference import DOCKER_HUB, Reference

Progress = Callable[[str, int, "int | None", str], None]
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, *DOCKER_SCHEMA1])
USER_AGENT = "lightabaco-image-puller/1"
CHUNK = 1 << 20
MAX_MANIFEST = 4 << 20


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="https://auth",service="reg",scope="repository:x:pull"` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)\s*=\s*"([^"]*)"', rest)}
    for k, v in re.findall(r'([A-Za-z_]+)\s*=\s*([^",\s]+)', rest):
        params.setdefault(k.lower(), v)
    return scheme.lower(), params


def credentials_for(registry: str) -> tuple[str, str] | None:
    """(username, password) for `registry` from LIGHTABACO_REGISTRY_AUTH or ~/.docker/config.json."""
    sources: list[Any] = []
    env = os.environ.get("LIGHTABACO_REGISTRY_AUTH", "").strip()
    if env:
        try:
            sources.append(json.loads(env) if env.startswith("{") else json.loads(Path(env).read_text()))
        except (OSError, ValueError) as e:
            raise RegistryAuthError(f"LIGHTABACO_REGISTRY_AUTH is neither a readable docker config.json path nor "
                                    f"inline JSON ({e}); fix it or unset it") from None
    docker_cfg = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        sources.append(json.loads(docker_cfg.read_text()))
    except (OSError, ValueError):
        pass
    keys = {registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v2/",
            f"https://{registry}/v1/"}
    if registry == DOCKER_HUB:
        keys |= {"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"}
    for src in sources:
        auths = src.get("auths", src) if isinstance(src, dict) else {}
        for key, entry in (auths or {}).items():
            if key.rstrip("/") not in {k.rstrip("/") for k in keys} or not isinstance(entry, dict):
                continue
            if entry.get("username") is not None:
                return str(entry["username"]), str(entry.get("password") or "")
            if entry.get("auth"):
                user, _, pw = base64.b64decode(entry["auth"]).decode().partition(":")
                return user, pw
    return None


# -- limits and the address policy -----------------------------------------------------------------


@dataclass(frozen=True)
class PullLimits:
    """Bounds on one pull, so a hostile or broken registry costs a bounded amount of time and bytes."""

    deadline_s: float = 900.0  # the whole pull (every request and body), then it is abandoned
    connect_timeout_s: float = 10.0  # per connection
    read_timeout_s: float = 30.0  # per read, and for a response's status line and headers
    min_rate_bytes_s: int = 10_000  # a body arriving slower than this on average (after the grace) is dropped
    rate_grace_s: float = 30.0
    max_manifest_bytes: int = MAX_MANIFEST  # manifests and indexes
    max_config_bytes: int = MAX_MANIFEST  # the image config blob
    max_image_bytes: int = 8 << 30  # compressed bytes one pull may download (layers, config, manifests)
    max_redirects: int = 5  # blob GETs only (to the registry's storage); nothing else is redirected


@dataclass(frozen=True)
class PullOptions:
    """Who may be contacted and within which limits. The default is the instance owner's (any address):
    the server installs a stricter one (`pull_options`) around pulls it makes for API users."""

    policy: AddressPolicy = UNRESTRICTED
    limits: PullLimits = field(default_factory=PullLimits)


_OPTIONS: ContextVar[PullOptions] = ContextVar("lightabaco_pull_options", default=PullOptions())


@contextlib.contextmanager
def pull_options(policy: AddressPolicy | None = None, limits: PullLimits | None = None) -> Iterator[PullOptions]:
    """Every RegistryClient created inside the block (same thread/context) uses these options."""
    current = _OPTIONS.get()
    opts = PullOptions(policy=policy or current.policy, limits=limits or current.limits)
    token = _OPTIONS.set(opts)
    try:
        yield opts
    finally:
        _OPTIONS.reset(token)


# Distribution error codes (spec): the only part of an error body we repeat, because it is one of a
# fixed set; anything else a registry writes in a body is never echoed (it may be another host's answer).
_KNOWN_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "MANIFEST_UNVERIFIED", "NAME_INVALID", "NAME_UNKNOWN",
    "SIZE_INVALID", "TAG_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS"})
_REDIRECTS = (301, 302, 303, 307, 308)


class _Response:
    """One answer: status and headers, and a body read within the pull's deadline, rate and byte budget."""

    def __init__(self, client: "RegistryClient", conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse, dog: Watchdog, host: str) -> None:
        self.client, self.conn, self.resp, self.dog, self.host = client, conn, resp, dog, host
        self.status = resp.status
        self.headers = resp.headers
        self._started = time.monotonic()
        self._got = 0

    def chunks(self, limit: int, what: str) -> Iterator[bytes]:
        """The body in chunks; RegistryError once more than `limit` bytes arrive or it is too slow."""
        limits = self.client.limits
        declared = self.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RegistryError(f"{what}: {self.host} announces {int(declared)} bytes, more than the "
                                f"{limit} expected; refusing it")
        while True:
            try:
                chunk = self.resp.read1(CHUNK)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise self._broken(what, exc) from None
            if self.dog.fired:
                raise self._broken(what, TimeoutError())
            if not chunk:
                return
            self._got += len(chunk)
            self.client._count(len(chunk), what)
            if self._got > limit:
                raise RegistryError(f"{what}: {self.host} sent more than the {limit} bytes expected; "
                                    "refusing it (the registry is broken or hostile)")
            elapsed = time.monotonic() - self._started
            if elapsed > limits.rate_grace_s and self._got / elapsed < limits.min_rate_bytes_s:
                raise RegistryError(
                    f"{what}: {self.host} sends {self._got / elapsed:.0f} bytes/s, below the minimum of "
                    f"{limits.min_rate_bytes_s} bytes/s; abandoned. Try again later or use another registry")
            yield chunk

    def read(self, limit: int, what: str) -> bytes:
        return b"".join(self.chunks(limit, what))

    def _broken(self, what: str, exc: BaseException) -> RegistryError:
        if self.dog.fired or isinstance(exc, TimeoutError):
            return self.client._timeout_error(what, self.host)
        return RegistryError(f"{what}: the connection to {self.host} broke off after {self._got} bytes "
                             f"({type(exc).__name__}); pull again")

    def close(self) -> None:
        self.dog.cancel()
        with contextlib.suppress(Exception):
            self.resp.close()
        with contextlib.suppress(Exception):
            self.conn.close()


class RegistryClient:
    """Talks to one repository on one registry, within the PullOptions in effect when it is created."""

    def __init__(self, ref: Reference, *, username: str | None = None, password: str | None = None,
                 insecure: bool = False, timeout: float | None = None,
                 options: PullOptions | None = None, scheme: str | None = None) -> None:
        self.ref = ref
        self.repo = ref.repository
        self.host = ref.api_host
        opts = options or _OPTIONS.get()
        self.policy = opts.policy
        self.limits = opts.limits if timeout is None else dataclasses.replace(
            opts.limits, read_timeout_s=timeout, connect_timeout_s=min(timeout, opts.limits.connect_timeout_s))
        self._deadline = time.monotonic() + self.limits.deadline_s
        self._downloaded = 0
        self._declared: dict[str, int] = {}  # digest -> size, from the manifest this client fetched
        self.plain_http_ok = insecure or ref.is_loopback
        self.scheme = "https"
        self._scheme_settled = not self.plain_http_ok
        if scheme in ("http", "https"):  # the caller knows (the API server's own URL): no https try first
            self.scheme, self._scheme_settled = scheme, True
            self.plain_http_ok = self.plain_http_ok or scheme == "http"
        if username is None and password is None:
            found = credentials_for(ref.registry)
            if found:
                username, password = found
        self.username, self.password = username, password
        self._auth_header: str | None = None
        # Like docker's insecure registries: self-signed TLS is accepted too, not just plain http.
        self.tls = ssl.create_default_context()
        if self.plain_http_ok:
            self.tls.check_hostname = False
            self.tls.verify_mode = ssl.CERT_NONE
        # Environment proxies (HTTPS_PROXY, NO_PROXY) apply, except to loopback registries, as in docker.
        self.use_proxies = not ref.is_loopback

    # -- budget and time

    def _remaining(self, what: str) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._timeout_error(what, self.host)
        return left

    def _timeout_error(self, what: str, host: str) -> RegistryError:
        return RegistryError(
            f"{what}: {host} did not answer in time (no data for {self.limits.read_timeout_s:g} s, or the "
            f"pull took longer than its {self.limits.deadline_s:g} s limit); abandoned. Try again later, "
            "or ask the instance owner about the pull limits")

    def _count(self, n: int, what: str) -> None:
        self._downloaded += n
        if self._downloaded > self.limits.max_image_bytes:
            raise RegistryError(f"{what}: the image needs more than the {self.limits.max_image_bytes} bytes one "
                                "pull may download; refusing it (the instance owner sets the cap)")

    def proxy_for(self, scheme: str, host: str) -> str | None:
        """The environment proxy URL for this request, or None (loopback registries never use one)."""
        if not self.use_proxies:
            return None
        proxy = urllib.request.getproxies().get(scheme)
        if not proxy or urllib.request.proxy_bypass(host):
            return None
        return proxy

    # -- HTTP

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def _exchange(self, url: str, headers: dict[str, str], what: str,
                  timeout: float | None = None) -> _Response:
        """One GET to `url`, connected to an address the policy allows, answer head within the read timeout."""
        split = urllib.parse.urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise RegistryError(f"{what}: {url.split('?')[0]!r} is not an http(s) URL; refusing it")
        host = split.hostname
        port = split.port or (443 if split.scheme == "https" else 80)
        connect_timeout = min(timeout or self.limits.connect_timeout_s, self._remaining(what))
        proxy = self.proxy_for(split.scheme, host)
        try:
            try:
                addrs = self.policy.resolve(host, port)
            except OSError:
                if not proxy:
                    raise
                addrs = []  # only the proxy can resolve it; the owner's proxy is trusted with the name
            if proxy:
                p = urllib.parse.urlsplit(proxy)
                paddrs = UNRESTRICTED.resolve(p.hostname or "", p.port or 80)  # the owner configured it
                conn: http.client.HTTPConnection = (
                    PinnedHTTPSConnection(p.hostname or "", p.port or 80, paddrs, connect_timeout, self.tls)
                    if split.scheme == "https" else PinnedHTTPConnection(p.hostname or "", p.port or 80, paddrs,
                                                                connect_timeout))
                conn.set_tunnel(host, port)
            elif split.scheme == "https":
                conn = PinnedHTTPSConnection(host, port, addrs, connect_timeout, self.tls)
            else:
                conn = PinnedHTTPConnection(host, port, addrs, connect_timeout)
        except AddressRefused as exc:
            raise RegistryError(f"{what}: refused before connecting: {exc}") from None
        dog = Watchdog(conn)
        # The status line and headers must arrive within the read timeout (and the pull's deadline).
        dog.arm(min(self.limits.read_timeout_s + connect_timeout, self._remaining(what)))
        path = split.path or "/"
        if split.query:
            path += "?" + split.query
        try:
            conn.connect()
            conn.sock.settimeout(min(self.limits.read_timeout_s, self._remaining(what)))  # type: ignore[union-attr]
            conn.request("GET", path, headers=dict(headers, **{"User-Agent": USER_AGENT}))
            resp = conn.getresponse()
        except BaseException as exc:
            dog.cancel()
            conn.close()
            if dog.fired and isinstance(exc, (OSError, http.client.HTTPException)):
                raise self._timeout_error(what, host) from None
            raise
        dog.arm(self._remaining(what))  # the body: bounded by the deadline, the read timeout and the rate
        return _Response(self, conn, resp, dog, host if not split.port else f"{host}:{split.port}")

    def _send(self, url: str, headers: dict[str, str], auth: bool, what: str,
              follow: bool = False) -> _Response:
        """One request; redirects are followed only when `follow` (blob GETs to the registry's storage),
        at most max_redirects hops, each to an address the policy allows, never from https to http, and
        the Authorization header never leaves the registry's own host."""
        origin = urllib.parse.urlsplit(url).netloc
        # The first https try against a registry that may be plain http must not hang for a minute.
        timeout = None if self._scheme_settled else min(self.limits.connect_timeout_s, 5.0)
        for _ in range(self.limits.max_redirects + 1):
            h = dict(headers)
            if auth and self._auth_header and urllib.parse.urlsplit(url).netloc == origin:
                h["Authorization"] = self._auth_header
            resp = self._exchange(url, h, what, timeout)
            if resp.status not in _REDIRECTS:
                return resp
            location = resp.headers.get("Location") or ""
            resp.close()
            if not follow or not location:
                raise RegistryError(f"{what}: {resp.host} answered a redirect (HTTP {resp.status}) where the "
                                    "distribution protocol has none; refusing to follow it. Check the "
                                    "registry name")
            target = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).scheme == "https" and urllib.parse.urlsplit(target).scheme != "https":
                raise RegistryError(f"{what}: {resp.host} redirected from https to a plain-http URL; refusing "
                                    "it. Report this to the registry's operator")
            url = target
        raise RegistryError(f"{what}: more than {self.limits.max_redirects} redirects from {self.host}; the "
                            "registry is misconfigured")

    def _request(self, path: str, what: str, headers: dict[str, str] | None = None,
                 follow: bool = False) -> _Response:
        """GET path on the registry, settling http/https and authenticating on a 401 challenge."""
        headers = headers or {}
        resp = self._open_settling_scheme(path, headers, what, follow)
        if resp.status == 401:
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.close()
            self._authenticate(challenge, what)
            resp = self._open_settling_scheme(path, headers, what, follow)
            if resp.status == 401:
                resp.close()
                raise RegistryAuthError(
                    f"{self.ref.registry} rejected the credentials for {self.repo}"
                    + ("" if self.username else " (none were given: pass --username/--password, or log in "
                                                "with `docker login`/LIGHTABACO_REGISTRY_AUTH)"))
        return resp

    def _open_settling_scheme(self, path: str, headers: dict[str, str], what: str,
                              follow: bool) -> _Response:
        try:
            return self._send(self._url(path), headers, True, what, follow)
        except (http.client.HTTPException, OSError) as e:
            if not self._scheme_settled and self.scheme == "https":
                # Loopback/insecure registry without TLS: fall back to plain http once, for good.
                self.scheme, self._scheme_settled = "http", True
                return self._open_settling_scheme(path, headers, what, follow)
            raise RegistryError(f"cannot reach registry {self.host} ({type(e).__name__}: {e}); check the name, "
                                "your network, or pass insecure=True for a plain-http registry") from None
        finally:
            self._scheme_settled = True

    def _authenticate(self, challenge: str, what: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self.username:
                raise RegistryAuthError(f"{self.ref.registry} needs a username and password for {self.repo}; pass "
                                        "--username/--password or set LIGHTABACO_REGISTRY_AUTH")
            basic = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            self._auth_header = f"Basic {basic}"
            return
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(f"{self.ref.registry} asked for an unsupported kind of authentication "
                                    f"({scheme or 'none'}); pull from another registry")
        query = {"service": params.get("service", "")} if params.get("service") else {}
        query["scope"] = params.get("scope") or f"repository:{self.repo}:pull"
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        split = urllib.parse.urlsplit(url)
        realm_host = split.hostname or "?"
        loopback = realm_host in ("localhost", "127.0.0.1", "::1")
        if split.scheme != "https" and not (self.plain_http_ok or loopback):
            raise RegistryAuthError(f"{self.ref.registry} sends credentials to a plain-http token service "
                                    f"({realm_host}); refusing. Mark the registry insecure if that is intended")
        h = {}
        if self.username:
            h["Authorization"] = "Basic " + base64.b64encode(
                f"{self.username}:{self.password or ''}".encode()).decode()
        token_what = f"token service {realm_host} for {self.repo}"
        try:
            resp = self._exchange(url, h, token_what)  # never redirected: the realm is the address
        except (http.client.HTTPException, OSError) as e:
            raise RegistryError(f"cannot reach the {token_what} ({type(e).__name__}); check the network or "
                                "the registry's auth configuration") from None
        try:
            if resp.status != 200:
                raise RegistryAuthError(f"the {token_what} refused access (HTTP {resp.status}); "
                                        + ("check the username and password" if self.username else
                                           "the repository may be private: give credentials"))
            body = resp.read(1 << 20, token_what)
        finally:
            resp.close()
        token: str | None = None
        with contextlib.suppress(ValueError, AttributeError):
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        if not token or not isinstance(token, str):
            raise RegistryAuthError(f"the {token_what} answered without a token; the registry's auth "
                                    "is misconfigured")
        self._auth_header = f"Bearer {token}"

    def _fail(self, resp: _Response, what: str) -> RegistryError:
        """The error for a non-success answer: status, host and what to do - never the body's text (it
        may be a redirected-to internal service's answer); only a standard distribution error code."""
        codes: list[str] = []
        with contextlib.suppress(RegistryError, ValueError, AttributeError, TypeError):
            errs = json.loads(resp.read(8192, what)).get("errors") or []
            codes = [str(e.get("code")) for e in errs if str(e.get("code")) in _KNOWN_CODES][:3]
        resp.close()
        code = f", {'/'.join(codes)}" if codes else ""
        where = f"{resp.host} answered HTTP {resp.status}{code}"
        if resp.status == 404:
            return RegistryError(f"{what}: not found ({where}); check the name and tag")
        if resp.status == 429:
            return RegistryError(f"{what}: the registry is rate-limiting pulls ({where}); wait, or log in "
                                 "(--username/--password) for a higher limit")
        if resp.status in (401, 403):
            return RegistryAuthError(f"{what}: access denied ({where}); check the credentials and that the "
                                     "repository exists")
        return RegistryError(f"{what}: {where}; try again later or check the registry")

    # -- API

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index; the digest is computed, never trusted.

        An image manifest's declared sizes are remembered: its blobs may not exceed them, and together
        they may not exceed the per-image download cap."""
        what = f"{self.ref.name}:{reference}" if not reference.startswith("sha256:") else f"{self.ref.name}@{reference}"
        what = f"manifest {what}"
        resp = self._request(f"/v2/{self.repo}/manifests/{reference}", what, {"Accept": ACCEPT})
        try:
            if resp.status != 200:
                raise self._fail(resp, what)
            body = resp.read(self.limits.max_manifest_bytes, what)
        finally:
            resp.close()
        digest = sha256_digest(body)
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"{what}: the registry sent content with digest {digest}; refusing it "
                             "(wrong digest: the registry or something in between is broken or malicious)")
        mtype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        self._remember_sizes(body, what)
        return body, mtype, digest

    def _remember_sizes(self, body: bytes, what: str) -> None:
        try:
            doc = json.loads(body)
        except ValueError:
            return  # the caller reports a malformed manifest
        if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
            return  # an index (or schema 1, refused by the caller)
        descs = [doc.get("config")] + list(doc["layers"])
        total = 0
        for d in descs:
            if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
                continue
            size = d.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ImageError(f"{what}: blob {d['digest'][:19]} has no valid size; the manifest is "
                                 "malformed, push the image again")
            self._declared[d["digest"]] = size
            total += size
        if total > self.limits.max_image_bytes:
            raise RegistryError(f"{what}: the image's layers add up to {total} bytes, more than the "
                                f"{self.limits.max_image_bytes} bytes one pull may download; refusing it (the "
                                "instance owner sets the cap)")

    def get_blob_bytes(self, digest: str, limit: int) -> bytes:
        """A small blob (the image config) in memory, at most `limit`, the config cap and its declared size."""
        what = f"blob {digest} of {self.ref.name}"
        limit = min(limit, self.limits.max_config_bytes, self._declared.get(digest, limit))
        resp = self._request(f"/v2/{self.repo}/blobs/{digest}", what, follow=True)
        try:
            if resp.status != 200:
                raise self._fail(resp, what)
            body = resp.read(limit, what)
        finally:
            resp.close()
        if sha256_digest(body) != digest:
            raise ImageError(f"{what}: content has digest {sha256_digest(body)}; refusing")
        return body

    def download_blob(self, digest: str, partial: Path, final: Path, *, progress: Progress | None = None,
                      base: int = 0, total: int | None = None, detail: str = "") -> None:
        """Download a blob to `partial` (resuming it with a Range request), verify, rename to `final`.
        Never more than the manifest's declared size (nor the pull's remaining byte budget) is read."""
        what = f"blob {digest} of {self.ref.name}"
        size = self._declared.get(digest, self.limits.max_image_bytes)
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink(missing_ok=True)
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        resp = self._request(f"/v2/{self.repo}/blobs/{digest}", what, headers, follow=True)
        if resp.status == 416:  # nothing after `have`: the partial is complete, or longer than the blob
            resp.close()
            if _file_digest(partial) == digest:
                os.replace(partial, final)
                return
            partial.unlink(missing_ok=True)
            have, resp = 0, self._request(f"/v2/{self.repo}/blobs/{digest}", what, follow=True)
        if resp.status == 200:
            have, mode = 0, "wb"
        elif resp.status == 206 and have:
            mode = "ab"
        else:
            raise self._fail(resp, what)
        h = hashlib.sha256()
        if have:  # the resumed download's digest covers the bytes we already hold
            with open(partial, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        done = have
        try:
            with open(partial, mode) as out:
                for chunk in resp.chunks(size - have, what):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress("pull", base + done, total, detail)
        except OSError as e:
            raise RegistryError(f"{what}: could not write the download ({e}); free disk space and pull "
                                "again") from None
        except RegistryError:
            if done > size:
                partial.unlink(missing_ok=True)
            raise
        finally:
            resp.close()
        got = "sha256:" + h.hexdigest()
        if got != digest:
            partial.unlink(missing_ok=True)
            raise ImageError(f"{what} downloaded with digest {got}; discarded it. "
                             "Pull again; if it repeats, the registry serves corrupt data")
        os.replace(partial, final)
