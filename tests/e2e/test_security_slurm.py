"""Issue 12: the API server's image store over the distribution API (`/v2/`), for worker hosts.

Attacks: a caller without credentials, with an ordinary user's token, with the instance owner's token,
with a wrong worker credential (as basic auth and as bearer), writes (PUT/POST/DELETE), names and digests
built to leave the blob directory. Then the real use: `pull_from_api` into a fresh image store - on this
host, and from a process in a network namespace made by the test, across a veth pair (the API bound
only to the root-namespace end, so the pull really crosses the boundary).
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from lightabaco.images import ImageStore
from lightabaco.images.distribution import pull_from_api
from lightabaco.sandbox.errors import ImageError, RegistryAuthError
from tests.fixtures.server import ROOT, LiveServer, free_port, import_test_images, make_home

IMAGE = "abacosamples/test"
NORMAL = "docker.io/abacosamples/test"


def _basic(secret: str, user: str = "lightabaco-worker") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, test_image_layouts: Path, request: pytest.FixtureRequest):
    from tests.fixtures.server import _database_settings

    home = make_home()
    import_test_images(home, test_image_layouts)
    server = LiveServer(home=home, port=free_port(), settings=_database_settings(request)).start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


def _credential(server: LiveServer) -> str:
    path = server.home / "worker-token"
    assert (path.stat().st_mode & 0o777) == 0o600, "the worker credential must be private to its owner"
    return path.read_text().strip()


def test_the_image_endpoint_refuses_everyone_but_worker_hosts(api: LiveServer) -> None:
    cred = _credential(api)
    url = api.url + f"/v2/{NORMAL}/manifests/latest"
    # nobody
    r = requests.get(url, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic ")
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # the owner's own API token, both ways the API accepts it: not a worker credential
    assert requests.get(url, headers=api.headers(), timeout=10).status_code == 401
    assert requests.get(url, headers={"X-Tapis-Token": api.token}, timeout=10).status_code == 401
    assert requests.get(url, headers=_basic(api.token), timeout=10).status_code == 401
    # an ordinary user's token, and an admin's (made by the owner over the API)
    for name, role in (("mallory", "user"), ("root-ish", "admin")):
        made = api.post("/actors/admin/users", json={"username": name, "role": role})
        assert made.status_code == 200, made.text
        token = made.json()["result"]["token"]
        assert api.get("/actors", headers={"Authorization": f"Bearer {token}"}).status_code == 200, "token works"
        assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 401
        assert requests.get(url, headers=_basic(token), timeout=10).status_code == 401
    # wrong credentials, near misses
    for bad in (cred[:-1], cred + "x", cred.upper() if cred.upper() != cred else cred.lower(), ""):
        assert requests.get(url, headers=_basic(bad), timeout=10).status_code == 401
        assert requests.get(url, headers={"Authorization": f"Bearer {bad}"}, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Basic !!notbase64"}, timeout=10).status_code == 401
    # the worker credential, as basic auth (any user name) and as a bearer token
    ok = requests.get(url, headers=_basic(cred, "anyone"), timeout=10)
    assert ok.status_code == 200, ok.text
    assert requests.get(url, headers={"Authorization": f"Bearer {cred}"}, timeout=10).status_code == 200
    assert requests.get(api.url + "/v2/", headers=_basic(cred), timeout=10).status_code == 200


def test_the_image_endpoint_is_read_only_and_stays_in_the_store(api: LiveServer) -> None:
    h = _basic(_credential(api))
    m = requests.get(api.url + f"/v2/{NORMAL}/manifests/latest", headers=h, timeout=10)
    digest = m.headers["Docker-Content-Digest"]
    layer = json.loads(m.content)["layers"][0]["digest"]
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        r = requests.request(method, api.url + f"/v2/{NORMAL}/manifests/latest", headers=h, data=b"{}", timeout=10)
        assert r.status_code == 405, (method, r.status_code)
        r = requests.request(method, api.url + f"/v2/{NORMAL}/blobs/uploads/", headers=h, timeout=10)
        assert r.status_code == 405
    # by digest: the manifest and a layer; HEAD gives the size only
    assert requests.get(api.url + f"/v2/{NORMAL}/manifests/{digest}", headers=h, timeout=10).content == m.content
    head = requests.head(api.url + f"/v2/{NORMAL}/blobs/{layer}", headers=h, timeout=10)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0 and not head.content
    # a layer digest is not a manifest; unknown names and digests are 404; paths built to escape stay 404
    assert requests.get(api.url + f"/v2/{NORMAL}/manifests/{layer}", headers=h, timeout=10).status_code == 404
    assert requests.get(api.url + f"/v2/{NORMAL}/manifests/nosuchtag", headers=h, timeout=10).status_code == 404
    assert requests.get(api.url + "/v2/docker.io/other/image/manifests/latest", headers=h, timeout=10).status_code == 404
    assert requests.get(api.url + f"/v2/x/blobs/sha256:{'0' * 64}", headers=h, timeout=10).status_code == 404
    for path in ("/v2/x/blobs/sha256:..%2f..%2frefs.json", "/v2/x/blobs/..%2f..%2frefs.json",
                 "/v2/x/blobs/sha256:" + "a" * 63 + "%2f..%2f..%2frefs.json", "/v2/%2e%2e/token", "/v2/x/blobs/refs.json",
                 "/v2/X/manifests/latest", "/v2/x/manifests/.hidden"):
        r = requests.get(api.url + path, headers=h, timeout=10)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert api.token not in r.text


def test_a_worker_host_pulls_by_tag_and_by_digest_and_a_wrong_credential_is_refused(api: LiveServer,
                                                                                     tmp_path: Path) -> None:
    cred = _credential(api)
    server_store = ImageStore(api.home / "images")
    image_id = server_store.get(IMAGE).config_digest
    store = ImageStore(tmp_path / "node-store")
    with pytest.raises(RegistryAuthError):
        pull_from_api(store, api.url, cred + "x", IMAGE)
    with pytest.raises(RegistryAuthError):
        pull_from_api(store, api.url, api.token, IMAGE)  # the owner's token is not the worker credential
    img = pull_from_api(store, api.url, cred, IMAGE, image_id=image_id)
    assert img.config_digest == image_id
    assert store.get(IMAGE).config_digest == image_id, "stored under the actor's own image name"
    assert (img.rootfs / "bin" / "busybox").exists() or (img.rootfs / "bin" / "sh").exists()
    # by manifest digest, into another store; a wrong expected image ID is an error (a moved tag)
    manifest = next(e["manifest"] for e in server_store.list() if e["reference"].startswith(NORMAL + ":"))
    other = ImageStore(tmp_path / "node-store-2")
    assert pull_from_api(other, api.url, cred, f"{IMAGE}@{manifest}").config_digest == image_id
    with pytest.raises(ImageError, match="not"):
        pull_from_api(ImageStore(tmp_path / "s3"), api.url, cred, IMAGE, image_id="sha256:" + "1" * 64)


# -- across a network namespace ------------------------------------------------------------------------

PULL_SCRIPT = """
import sys, json
from lightabaco.images import ImageStore
from lightabaco.images.distribution import pull_from_api
api, cred, ref, dest = sys.argv[1:5]
try:
    img = pull_from_api(ImageStore(dest), api, cred, ref)
    print(json.dumps({"ok": img.config_digest}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _netns_missing() -> str:
    if os.geteuid() != 0:
        return "network namespaces and veth pairs need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return ""


@pytest.fixture
def netns_pair():
    """A network namespace joined to this one by a veth pair: (namespace, our address, its address)."""
    why = _netns_missing()
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 10000}{random.randrange(100)}"
    ns, here, there = f"lab-wh{tag}", f"lwa{tag}", f"lwb{tag}"
    net = random.randrange(0, 250)
    mine, theirs = f"10.231.{net}.1", f"10.231.{net}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    ip("netns", "add", ns)
    try:
        ip("link", "add", here, "type", "veth", "peer", "name", there)
        ip("link", "set", there, "netns", ns)
        ip("addr", "add", f"{mine}/30", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", ns, "addr", "add", f"{theirs}/30", "dev", there)
        ip("-n", ns, "link", "set", there, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns, mine, theirs
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


class BoundServer(LiveServer):
    """A live server listening only on the given address (the root end of the veth pair)."""

    @property
    def url(self) -> str:
        return f"http://{self.settings['host']}:{self.port}"


def test_a_host_in_another_network_namespace_pulls_from_the_api(netns_pair, test_image_layouts: Path,
                                                                  tmp_path: Path) -> None:
    ns, mine, theirs = netns_pair
    home = make_home()
    import_test_images(home, test_image_layouts)
    server = BoundServer(home=home, port=free_port(), settings={"host": mine})
    server.start()
    try:
        cred = (home / "worker-token").read_text().strip()
        manifest = next(e["manifest"] for e in ImageStore(home / "images").list()
                        if e["reference"].startswith(NORMAL + ":"))
        image_id = ImageStore(home / "images").get(IMAGE).config_digest
        dest = tmp_path / "host-b-store"

        def pull(api: str, secret: str, ref: str, where: Path) -> dict:
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PULL_SCRIPT, api, secret, ref,
                                str(where)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout.strip().splitlines()[-1])

        # the other host cannot reach this one's loopback: what it gets comes over the veth
        out = pull(f"http://127.0.0.1:{server.port}", cred, f"{IMAGE}@{manifest}", tmp_path / "lo")
        assert out.get("error") == "RegistryError", out
        # a wrong credential is refused across the boundary too
        out = pull(f"http://{mine}:{server.port}", cred[::-1], f"{IMAGE}@{manifest}", tmp_path / "bad")
        assert out.get("error") == "RegistryAuthError", out
        out = pull(f"http://{mine}:{server.port}", server.token, f"{IMAGE}@{manifest}", tmp_path / "bad2")
        assert out.get("error") == "RegistryAuthError", out
        # by digest with the worker credential: the image arrives, verified
        out = pull(f"http://{mine}:{server.port}", cred, f"{IMAGE}@{manifest}", dest)
        assert out == {"ok": image_id}, out
        assert ImageStore(dest).get(f"{IMAGE}@{manifest}").config_digest == image_id
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
