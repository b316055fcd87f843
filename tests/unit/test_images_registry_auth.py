"""Registry auth helpers: WWW-Authenticate parsing and where credentials come from."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from lightabaco.sandbox.errors import RegistryAuthError
from lightabaco.images.registry import credentials_for, parse_challenge


def test_parse_bearer_and_basic_challenges() -> None:
    scheme, p = parse_challenge('Bearer realm="https://auth.example/token",service="reg.example",'
                                'scope="repository:team/app:pull"')
    assert scheme == "bearer"
    assert p == {"realm": "https://auth.example/token", "service": "reg.example", "scope": "repository:team/app:pull"}
    assert parse_challenge('Basic realm="registry"') == ("basic", {"realm": "registry"})
    assert parse_challenge("Bearer realm=https://a/t,service=s") == ("bearer", {"realm": "https://a/t", "service": "s"})


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("LIGHTABACO_REGISTRY_AUTH", raising=False)
    return tmp_path


def test_credentials_from_docker_config(clean_env: Path) -> None:
    (clean_env / ".docker").mkdir()
    auth = base64.b64encode(b"alice:pw:with:colons").decode()
    (clean_env / ".docker/config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": auth},
        "quay.io": {"username": "bob", "password": "pw2"}}}))
    assert credentials_for("docker.io") == ("alice", "pw:with:colons")
    assert credentials_for("quay.io") == ("bob", "pw2")
    assert credentials_for("ghcr.io") is None


def test_credentials_from_lightabaco_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTABACO_REGISTRY_AUTH", json.dumps({"127.0.0.1:5000": {"username": "u", "password": "p"}}))
    assert credentials_for("127.0.0.1:5000") == ("u", "p")
    path = clean_env / "auth.json"
    path.write_text(json.dumps({"auths": {"https://reg.example": {"auth": base64.b64encode(b"x:y").decode()}}}))
    monkeypatch.setenv("LIGHTABACO_REGISTRY_AUTH", str(path))
    assert credentials_for("reg.example") == ("x", "y")
    monkeypatch.setenv("LIGHTABACO_REGISTRY_AUTH", str(clean_env / "missing.json"))
    with pytest.raises(RegistryAuthError, match="LIGHTABACO_REGISTRY_AUTH"):
        credentials_for("reg.example")


def test_credentials_are_not_forwarded_on_redirect_to_another_host(clean_env: Path) -> None:
    """Blob GETs are often redirected to a CDN: the registry's Authorization must not follow."""
    import hashlib
    import http.server
    import threading

    from lightabaco.images import parse_reference
    from lightabaco.images.registry import RegistryClient

    data = b"blob bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    seen: dict[str, list[str | None]] = {"registry": [], "cdn": []}

    class Cdn(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None: ...

        def do_GET(self) -> None:  # noqa: N802
            seen["cdn"].append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    cdn = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Cdn)

    class Reg(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None: ...

        def do_GET(self) -> None:  # noqa: N802
            auth = self.headers.get("Authorization")
            seen["registry"].append(auth)
            if not auth:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
            else:
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{cdn.server_address[1]}/signed-url")
                self.send_header("Content-Length", "0")
            self.end_headers()

    reg = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Reg)
    for srv in (cdn, reg):
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        client = RegistryClient(parse_reference(f"127.0.0.1:{reg.server_address[1]}/x/y:1"),
                                username="u", password="p")
        assert client.get_blob_bytes(digest, 1000) == data
    finally:
        for srv in (cdn, reg):
            srv.shutdown()
            srv.server_close()
    assert seen["registry"][-1] == "Basic " + base64.b64encode(b"u:p").decode()
    assert seen["cdn"] == [None]


def test_loopback_registries_bypass_environment_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightabaco.images import parse_reference
    from lightabaco.images.registry import RegistryClient

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    loop = RegistryClient(parse_reference("127.0.0.1:5000/x:1"))
    remote = RegistryClient(parse_reference("quay.io/x:1"))  # nothing is contacted here

    assert loop.proxy_for("https", "127.0.0.1") is None
    assert loop.proxy_for("http", "127.0.0.1") is None
    assert remote.proxy_for("https", "quay.io") == "http://127.0.0.1:9"
