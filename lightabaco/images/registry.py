"""A small client for the OCI distribution API v2 (what `docker pull` talks to), standard library only.

Auth: anonymous, HTTP basic, and the bearer-token flow (a 401 with
`WWW-Authenticate: Bearer realm=...,service=...,scope=...` -> GET realm for a token -> retry).
Credentials come from arguments, else `LIGHTABACO_REGISTRY_AUTH` (a docker-style config.json path, or
its JSON inline), else `~/.docker/config.json` (`auths` entries; credential helpers are not run).
`http://` is used only for loopback registries and those marked insecure (after trying https).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import ssl
import typing
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from lightabaco.sandbox.errors import ImageError, RegistryAuthError, RegistryError
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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by hand so the Authorization header never reaches another host (CDNs)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(insecure_tls: bool = False, use_proxies: bool = True) -> urllib.request.OpenerDirector:
    ctx = ssl.create_default_context()
    if insecure_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    # Environment proxies (HTTPS_PROXY, NO_PROXY) apply, except to loopback registries, as in docker.
    proxies = urllib.request.ProxyHandler() if use_proxies else urllib.request.ProxyHandler({})
    return urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=ctx), proxies)


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


class RegistryClient:
    """Talks to one repository on one registry."""

    def __init__(self, ref: Reference, *, username: str | None = None, password: str | None = None,
                 insecure: bool = False, timeout: float = 60.0) -> None:
        self.ref = ref
        self.repo = ref.repository
        self.host = ref.api_host
        self.timeout = timeout
        self.plain_http_ok = insecure or ref.is_loopback
        self.scheme = "https"
        self._scheme_settled = not self.plain_http_ok
        if username is None and password is None:
            found = credentials_for(ref.registry)
            if found:
                username, password = found
        self.username, self.password = username, password
        self._auth_header: str | None = None
        # Like docker's insecure registries: self-signed TLS is accepted too, not just plain http.
        self.opener = _opener(insecure_tls=self.plain_http_ok, use_proxies=not ref.is_loopback)

    # -- HTTP

    def _url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}{path}"

    def _send(self, url: str, headers: dict[str, str], auth: bool) -> http.client.HTTPResponse:
        """One request with manual redirects (Authorization dropped when the host changes)."""
        origin = urllib.parse.urlsplit(url).netloc
        # The first https try against a registry that may be plain http must not hang for a minute.
        timeout = self.timeout if self._scheme_settled else min(self.timeout, 5.0)
        for _ in range(10):
            h = dict(headers, **{"User-Agent": USER_AGENT})
            if auth and self._auth_header and urllib.parse.urlsplit(url).netloc == origin:
                h["Authorization"] = self._auth_header
            req = urllib.request.Request(url, headers=h)
            try:
                resp = self.opener.open(req, timeout=timeout)
            except urllib.error.HTTPError as e:
                if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                    url = urllib.parse.urljoin(url, e.headers["Location"])
                    e.close()
                    continue
                return typing.cast(http.client.HTTPResponse, e)  # an HTTPError is a response too
            return typing.cast(http.client.HTTPResponse, resp)
        raise RegistryError(f"{url}: too many redirects; the registry is misconfigured")

    def _request(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """GET path on the registry, settling http/https and authenticating on a 401 challenge."""
        headers = headers or {}
        resp = self._open_settling_scheme(path, headers)
        if resp.status == 401:
            challenge = resp.headers.get("WWW-Authenticate", "")
            resp.read()
            resp.close()
            self._authenticate(challenge)
            resp = self._open_settling_scheme(path, headers)
            if resp.status == 401:
                resp.close()
                raise RegistryAuthError(
                    f"{self.ref.registry} rejected the credentials for {self.repo}"
                    + ("" if self.username else " (none were given: pass --username/--password, or log in "
                                                "with `docker login`/LIGHTABACO_REGISTRY_AUTH)"))
        return resp

    def _open_settling_scheme(self, path: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        try:
            return self._send(self._url(path), headers, auth=True)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, OSError) as e:
            if not self._scheme_settled and self.scheme == "https":
                # Loopback/insecure registry without TLS: fall back to plain http once, for good.
                self.scheme, self._scheme_settled = "http", True
                return self._open_settling_scheme(path, headers)
            reason = getattr(e, "reason", e)
            raise RegistryError(f"cannot reach registry {self.host} ({reason}); check the name, your network, "
                                "or pass insecure=True for a plain-http registry") from None
        finally:
            self._scheme_settled = True

    def _authenticate(self, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if not self.username:
                raise RegistryAuthError(f"{self.ref.registry} needs a username and password for {self.repo}; pass "
                                        "--username/--password or set LIGHTABACO_REGISTRY_AUTH")
            basic = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            self._auth_header = f"Basic {basic}"
            return
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryAuthError(f"{self.ref.registry} asked for unsupported authentication {challenge!r}")
        query = {"service": params.get("service", "")} if params.get("service") else {}
        query["scope"] = params.get("scope") or f"repository:{self.repo}:pull"
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        split = urllib.parse.urlsplit(url)
        loopback = (split.hostname or "") in ("localhost", "127.0.0.1", "::1")
        if split.scheme != "https" and not (self.plain_http_ok or loopback):
            raise RegistryAuthError(f"{self.ref.registry} sends credentials to a plain-http token service "
                                    f"({realm}); refusing. Mark the registry insecure if that is intended")
        h = {"User-Agent": USER_AGENT}
        if self.username:
            h["Authorization"] = "Basic " + base64.b64encode(
                f"{self.username}:{self.password or ''}".encode()).decode()
        try:
            resp = self.opener.open(urllib.request.Request(url, headers=h), timeout=self.timeout)
            body = resp.read(1 << 20)
        except urllib.error.HTTPError as e:
            raise RegistryAuthError(f"the token service {realm} refused access to {self.repo} (HTTP {e.code}); "
                                    + ("check the username and password" if self.username else
                                       "the repository may be private: give credentials")) from None
        except (urllib.error.URLError, OSError) as e:
            raise RegistryError(f"cannot reach the token service {realm} ({getattr(e, 'reason', e)})") from None
        token: str | None = None
        with contextlib.suppress(ValueError, AttributeError):
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryAuthError(f"the token service {realm} answered without a token; the registry's auth "
                                    "is misconfigured")
        self._auth_header = f"Bearer {token}"

    @staticmethod
    def _fail(resp: http.client.HTTPResponse, what: str) -> RegistryError:
        body = resp.read(4096)
        resp.close()
        detail = ""
        try:
            errs = json.loads(body).get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)
        except (ValueError, AttributeError):
            detail = body[:200].decode(errors="replace")
        if resp.status == 404:
            return RegistryError(f"{what}: not found (HTTP 404{': ' + detail if detail else ''}); check the name "
                                 "and tag")
        if resp.status == 429:
            return RegistryError(f"{what}: the registry is rate-limiting pulls (HTTP 429); wait, or log in "
                                 "(--username/--password) for a higher limit")
        if resp.status in (401, 403):
            return RegistryAuthError(f"{what}: access denied (HTTP {resp.status}): {detail}")
        return RegistryError(f"{what}: the registry answered HTTP {resp.status} {detail}")

    # -- API

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index; the digest is computed, never trusted."""
        what = f"{self.ref.name}:{reference}" if not reference.startswith("sha256:") else f"{self.ref.name}@{reference}"
        resp = self._request(f"/v2/{self.repo}/manifests/{reference}", {"Accept": ACCEPT})
        if resp.status != 200:
            raise self._fail(resp, f"manifest {what}")
        body = resp.read(MAX_MANIFEST + 1)
        resp.close()
        if len(body) > MAX_MANIFEST:
            raise RegistryError(f"manifest {what} is larger than {MAX_MANIFEST} bytes; refusing")
        digest = sha256_digest(body)
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"manifest {what}: the registry sent content with digest {digest}; refusing it "
                             "(wrong digest: the registry or something in between is broken or malicious)")
        mtype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        return body, mtype, digest

    def get_blob_bytes(self, digest: str, limit: int) -> bytes:
        resp = self._request(f"/v2/{self.repo}/blobs/{digest}")
        if resp.status != 200:
            raise self._fail(resp, f"blob {digest} of {self.ref.name}")
        body = resp.read(limit + 1)
        resp.close()
        if len(body) > limit:
            raise RegistryError(f"blob {digest} of {self.ref.name} is larger than {limit} bytes; refusing")
        if sha256_digest(body) != digest:
            raise ImageError(f"blob {digest} of {self.ref.name}: content has digest {sha256_digest(body)}; refusing")
        return body

    def download_blob(self, digest: str, partial: Path, final: Path, *, progress: Progress | None = None,
                      base: int = 0, total: int | None = None, detail: str = "") -> None:
        """Download a blob to `partial` (resuming it with a Range request), verify, rename to `final`."""
        have = partial.stat().st_size if partial.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        resp = self._request(f"/v2/{self.repo}/blobs/{digest}", headers)
        if resp.status == 416:  # nothing after `have`: the partial is complete, or longer than the blob
            resp.close()
            if _file_digest(partial) == digest:
                os.replace(partial, final)
                return
            partial.unlink(missing_ok=True)
            have, resp = 0, self._request(f"/v2/{self.repo}/blobs/{digest}")
        if resp.status == 200:
            have, mode = 0, "wb"
        elif resp.status == 206 and have:
            mode = "ab"
        else:
            raise self._fail(resp, f"blob {digest} of {self.ref.name}")
        h = hashlib.sha256()
        if have:  # the resumed download's digest covers the bytes we already hold
            with open(partial, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        done = have
        try:
            with open(partial, mode) as out:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress("pull", base + done, total, detail)
        except (OSError, http.client.HTTPException) as e:
            raise RegistryError(f"download of {digest} from {self.ref.registry} broke off after {done} bytes "
                                f"({e}); pull again to resume") from None
        finally:
            resp.close()
        got = "sha256:" + h.hexdigest()
        if got != digest:
            partial.unlink(missing_ok=True)
            raise ImageError(f"blob {digest} of {self.ref.name} downloaded with digest {got}; discarded it. "
                             "Pull again; if it repeats, the registry serves corrupt data")
        os.replace(partial, final)
