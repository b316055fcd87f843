"""Pulls from a real docker-registry on loopback: anonymous, basic auth, bearer tokens, indexes, digests."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lightabaco.sandbox.errors import ImageError, ImageNotFound, RegistryAuthError, RegistryError
from lightabaco.images import ImageStore
from tests.fixtures.oci import OciLayoutWriter, dir, file, host_arch
from tests.fixtures.registry import Registry, free_port

pytestmark = pytest.mark.e2e


def image(marker: str = "v1", *, arch: str | None = None, docker: bool = False,
          compression: str = "gzip") -> OciLayoutWriter:
    w = OciLayoutWriter(media_types="docker" if docker else "oci")
    w.add_layer([dir("etc"), file("etc/marker", marker)], compression)
    w.add_layer([dir("app"), file("app/run.sh", f"#!/bin/sh\necho {marker}\n", mode=0o755)], compression)
    w.finish({"Cmd": ["/app/run.sh"], "Env": ["PATH=/bin"], "WorkingDir": "/app"}, architecture=arch)
    return w


def blob_file(reg: Registry, digest: str) -> Path:
    hexd = digest.split(":")[1]
    return reg.workdir / "data/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"


def test_anonymous_pull_by_tag_and_no_second_download(registry: Registry, tmp_path: Path) -> None:
    w = image("anon")
    registry.push_image(w, "e2e/anon", "1")
    store = ImageStore(tmp_path / "s")
    events: list[tuple] = []
    img = store.pull(registry.ref("e2e/anon", "1"), progress=lambda *a: events.append(a))
    assert img.config_digest == w.config_digest and img.reference == registry.ref("e2e/anon", "1")
    assert (img.rootfs / "etc/marker").read_text() == "anon"
    assert img.config.cmd == ["/app/run.sh"] and img.config.working_dir == "/app"
    pulled = [e for e in events if e[0] == "pull"]
    assert pulled and pulled[-1][1] == pulled[-1][2] == sum(layer["size"] for layer in w.layers)
    assert store.get(registry.ref("e2e/anon", "1")).rootfs == img.rootfs
    # blobs already in the store are not downloaded again, even when the rootfs must be rebuilt
    shutil.rmtree(img.rootfs.parent)
    events.clear()
    again = store.pull(registry.ref("e2e/anon", "1"), progress=lambda *a: events.append(a))
    assert [e[1] for e in events if e[0] == "pull"] == [0]  # announced, nothing downloaded
    assert (again.rootfs / "etc/marker").read_text() == "anon"


def test_pull_by_digest_and_lookup_by_digest(registry: Registry, tmp_path: Path) -> None:
    w = image("digest")
    digest = registry.push_image(w, "e2e/dig", "1")
    assert digest == w.manifest_digest
    store = ImageStore(tmp_path / "s")
    img = store.pull(registry.ref("e2e/dig", None, digest))
    assert img.reference == f"{registry.host}/e2e/dig@{digest}"
    store.pull(registry.ref("e2e/dig", "1"))
    assert store.get(f"{registry.host}/e2e/dig@{digest}").config_digest == w.config_digest
    assert store.get(f"{registry.host}/e2e/dig:1@{digest}").config_digest == w.config_digest


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-manifest-list"])
def test_multi_platform_index_resolves_to_host(registry: Registry, tmp_path: Path, docker: bool) -> None:
    other = "arm64" if host_arch() != "arm64" else "amd64"
    mine, theirs = image("mine", docker=docker), image("theirs", arch=other, docker=docker)
    repo = f"e2e/multi-{'docker' if docker else 'oci'}"
    index_digest = registry.push_index([theirs, mine], repo, "1", docker=docker)
    store = ImageStore(tmp_path / "s")
    img = store.pull(registry.ref(repo, "1"))
    assert (img.rootfs / "etc/marker").read_text() == "mine" and img.architecture == host_arch()
    # the index digest and the platform manifest digest both find it
    assert store.get(f"{registry.host}/{repo}@{index_digest}").config_digest == mine.config_digest
    assert store.get(f"{registry.host}/{repo}@{mine.manifest_digest}").config_digest == mine.config_digest


def test_index_without_host_platform_is_refused(registry: Registry, tmp_path: Path) -> None:
    other = "arm64" if host_arch() != "arm64" else "amd64"
    registry.push_index([image("x", arch=other)], "e2e/foreign", "1")
    with pytest.raises(ImageError, match=f"no image for this host.*linux/{other}"):
        ImageStore(tmp_path / "s").pull(registry.ref("e2e/foreign", "1"))


def test_zstd_layers_pull(registry: Registry, tmp_path: Path) -> None:
    w = image("zstd", compression="zstd")
    registry.push_image(w, "e2e/zstd", "1")
    img = ImageStore(tmp_path / "s").pull(registry.ref("e2e/zstd", "1"))
    assert (img.rootfs / "etc/marker").read_text() == "zstd"


def test_wrong_manifest_digest_is_rejected(registry: Registry, tmp_path: Path) -> None:
    w = image("tampered-manifest")
    digest = registry.push_image(w, "e2e/bad-manifest", "1")
    data = blob_file(registry, digest)
    data.write_bytes(data.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
    with pytest.raises(ImageError, match="wrong digest"):
        ImageStore(tmp_path / "s").pull(registry.ref("e2e/bad-manifest", None, digest))


def test_wrong_layer_digest_is_rejected_and_partial_dropped(registry: Registry, tmp_path: Path) -> None:
    w = image("tampered-layer")
    registry.push_image(w, "e2e/bad-layer", "1")
    layer = w.layers[1]["digest"]
    path = blob_file(registry, layer)
    good = path.read_bytes()
    path.write_bytes(good[:-8] + b"\0" * 8)
    store = ImageStore(tmp_path / "s")
    try:
        with pytest.raises(ImageError, match="downloaded with digest"):
            store.pull(registry.ref("e2e/bad-layer", "1"))
    finally:
        path.write_bytes(good)
    assert os.listdir(tmp_path / "s/blobs/partial") == []
    assert store.list() == []
    assert (store.pull(registry.ref("e2e/bad-layer", "1")).rootfs / "etc/marker").exists()


def test_interrupted_download_resumes_from_partial(registry: Registry, tmp_path: Path) -> None:
    w = OciLayoutWriter()
    w.add_layer([file("big", os.urandom(300_000))], "none")
    w.finish({"Cmd": ["/big"]})
    registry.push_image(w, "e2e/resume", "1")
    store = ImageStore(tmp_path / "s")
    layer = w.layers[0]["digest"]
    (tmp_path / "s/blobs/partial" / layer[7:]).write_bytes(w.blobs[layer][:123_456])
    events: list[tuple] = []
    img = store.pull(registry.ref("e2e/resume", "1"), progress=lambda *a: events.append(a))
    assert (img.rootfs / "big").stat().st_size == 300_000
    assert [e for e in events if e[0] == "pull"][-1][1] == w.layers[0]["size"]
    # A partial with a wrong prefix fails the digest check: proof that the Range request resumed it
    # (a fresh download would have succeeded). The bad partial is discarded, so the next pull works.
    store.remove(registry.ref("e2e/resume", "1"))
    (tmp_path / "s/blobs/partial" / layer[7:]).write_bytes(b"\xff" * 1000)
    with pytest.raises(ImageError, match="downloaded with digest"):
        store.pull(registry.ref("e2e/resume", "1"))
    assert store.pull(registry.ref("e2e/resume", "1")).config_digest == w.config_digest
    # a complete partial (the previous run died before the rename) is used as is
    store.remove(registry.ref("e2e/resume", "1"))
    (tmp_path / "s/blobs/partial" / layer[7:]).write_bytes(w.blobs[layer])
    events.clear()
    assert store.pull(registry.ref("e2e/resume", "1"), progress=lambda *a: events.append(a))
    assert [e[1] for e in events if e[0] == "pull"] == [0]


def test_missing_tag_and_unreachable_registry(registry: Registry, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    with pytest.raises(RegistryError, match="not found"):
        store.pull(registry.ref("e2e/nothing-here", "1"))
    with pytest.raises(RegistryError, match="cannot reach registry"):
        store.pull(f"127.0.0.1:{free_port()}/x/y:1")


def test_ensure_pulls_only_when_missing(registry: Registry, tmp_path: Path) -> None:
    w = image("ensure")
    registry.push_image(w, "e2e/ensure", "1")
    store = ImageStore(tmp_path / "s")
    with pytest.raises(ImageNotFound):
        store.get(registry.ref("e2e/ensure", "1"))
    assert store.ensure(registry.ref("e2e/ensure", "1")).config_digest == w.config_digest
    store.ensure(registry.ref("e2e/ensure", "1"), progress=lambda *a: pytest.fail("pulled again"))


def test_basic_auth_registry(basic_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.docker/config.json
    w = image("basic")
    basic_registry.push_image(w, "e2e/basic", "1")
    ref = basic_registry.ref("e2e/basic", "1")
    store = ImageStore(tmp_path / "s")
    with pytest.raises(RegistryAuthError, match="needs a username and password"):
        store.pull(ref)
    with pytest.raises(RegistryAuthError, match="rejected the credentials"):
        store.pull(ref, username=basic_registry.username, password="wrong")
    img = store.pull(ref, username=basic_registry.username, password=basic_registry.password)
    assert (img.rootfs / "etc/marker").read_text() == "basic"
    # credentials from a docker-style config named by LIGHTABACO_REGISTRY_AUTH
    import base64
    auth = base64.b64encode(f"{basic_registry.username}:{basic_registry.password}".encode()).decode()
    cfg = tmp_path / "auth.json"
    cfg.write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    monkeypatch.setenv("LIGHTABACO_REGISTRY_AUTH", str(cfg))
    store2 = ImageStore(tmp_path / "s2")
    assert store2.pull(ref).config_digest == w.config_digest


def test_bearer_token_registry(token_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    w = image("token")
    token_registry.push_image(w, "e2e/token", "1")
    ref = token_registry.ref("e2e/token", "1")
    ts = token_registry.token_server
    assert ts is not None
    ts.requests.clear()
    img = ImageStore(tmp_path / "s").pull(ref)  # anonymous token: pull allowed
    assert (img.rootfs / "etc/marker").read_text() == "token"
    assert {"service": ts.service, "scope": "repository:e2e/token:pull"} in ts.requests
    img2 = ImageStore(tmp_path / "s2").pull(ref, username=token_registry.username,
                                            password=token_registry.password)
    assert img2.config_digest == w.config_digest
    with pytest.raises(RegistryAuthError, match="refused access"):
        ImageStore(tmp_path / "s3").pull(ref, username=token_registry.username, password="wrong")


def _pull_worker(args: tuple[str, str]) -> str:
    store_dir, ref = args
    return ImageStore(store_dir).ensure(ref).config_digest


def test_concurrent_pulls_share_one_download_and_rootfs(registry: Registry, tmp_path: Path) -> None:
    import multiprocessing

    w = image("concurrent")
    registry.push_image(w, "e2e/concurrent", "1")
    ref = registry.ref("e2e/concurrent", "1")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        digests = pool.map(_pull_worker, [(str(tmp_path / "s"), ref)] * 3)
    assert set(digests) == {w.config_digest}
    assert len(os.listdir(tmp_path / "s/rootfs")) == 1
    assert os.listdir(tmp_path / "s/blobs/partial") == []
    assert [e["reference"] for e in ImageStore(tmp_path / "s").list()] == [ref]


def test_loopback_registry_with_self_signed_tls(tls_registry: Registry, tmp_path: Path) -> None:
    from lightabaco.images import parse_reference
    from lightabaco.images.registry import RegistryClient

    w = image("tls")
    tls_registry.push_image(w, "e2e/tls", "1")
    client = RegistryClient(parse_reference(tls_registry.ref("e2e/tls", "1")))
    body, _mtype, digest = client.get_manifest("1")
    assert digest == w.manifest_digest and client.scheme == "https"  # no fallback to plain http
    img = ImageStore(tmp_path / "s").pull(tls_registry.ref("e2e/tls", "1"))
    assert (img.rootfs / "etc/marker").read_text() == "tls"
