"""ImageStore: import formats, naming, lookup, rm/gc, locking and crash recovery."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from lightabaco.sandbox.errors import ImageError, ImageNotFound
from lightabaco.images import ImageStore
from tests.fixtures.oci import (OciLayoutWriter, busybox_layout, canonical_json, dir, file, host_arch,
                                image_index, symlink)

CONFIG = {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo $GREETING"], "Env": ["PATH=/bin", "GREETING=hi"],
          "WorkingDir": "/work", "User": "1000:1000", "Labels": {"org.example": "yes"}}


def small_image(compression: str = "gzip", ref: str = "localhost/small:1", arch: str | None = None,
                marker: str = "v1") -> OciLayoutWriter:
    w = OciLayoutWriter()
    w.add_layer([dir("etc"), file("etc/marker", marker), dir("bin"), symlink("bin/sh", "busybox")], compression)
    w.add_layer([dir("app"), file("app/run.sh", "#!/bin/sh\n", mode=0o755)], compression)
    w.finish(CONFIG, ref=ref, architecture=arch)
    return w


def test_every_format_shares_one_rootfs(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    gz, zst = small_image("gzip"), small_image("zstd")
    assert gz.config_digest == zst.config_digest and gz.manifest_digest != zst.manifest_digest
    sources = [gz.write_layout(tmp_path / "oci-gzip"), zst.write_layout(tmp_path / "oci-zstd"),
               gz.write_oci_archive(tmp_path / "oci.tar"),
               gz.write_docker_archive(tmp_path / "docker.tar", ["localhost/small:docker"]),
               gz.write_docker_archive(tmp_path / "docker-legacy.tar", ["localhost/small:legacy"], legacy_layout=True)]
    ids = set()
    for src in sources:
        (img,) = store.import_path(src)
        ids.add(img.config_digest)
        assert (img.rootfs / "etc/marker").read_text() == "v1"
    assert ids == {gz.config_digest}
    assert len(os.listdir(tmp_path / "store/rootfs")) == 1
    refs = {e["reference"] for e in store.list()}
    assert refs == {"localhost/small:1", "localhost/small:docker", "localhost/small:legacy"}


def test_docker_archive_unpacked_first_gets_a_manifest_and_blobs(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    w = small_image()
    (img,) = store.import_path(w.write_docker_archive(tmp_path / "d.tar", ["x:1"]))
    assert img.reference == "docker.io/library/x:1"
    # layers were copied while unpacking (read once), and a manifest describes them
    blobs = set(os.listdir(tmp_path / "store/blobs/sha256"))
    assert {d.split(":")[1] for d in w.diff_ids} <= blobs  # uncompressed layers: digest == diff_id
    # so the rootfs can be rebuilt from the store alone
    store.get("x:1")
    import shutil
    shutil.rmtree(img.rootfs.parent)
    again = store.get("x:1")
    assert (again.rootfs / "etc/marker").read_text() == "v1"


def test_image_config_is_parsed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    (img,) = store.import_path(small_image().write_layout(tmp_path / "l"))
    c = img.config
    assert c.entrypoint == ["/bin/sh", "-c"] and c.cmd == ["echo $GREETING"]
    assert c.env == ["PATH=/bin", "GREETING=hi"] and c.working_dir == "/work" and c.user == "1000:1000"
    assert c.labels == {"org.example": "yes"}
    assert img.architecture == host_arch() and img.os == "linux"
    assert (img.rootfs / "work").is_dir()  # WorkingDir made by the prepare step


def test_names_tags_and_lookup(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    w = busybox_layout(tmp_path / "bb", ref="latest")  # bare tag: not a name
    (img,) = store.import_path(tmp_path / "bb")
    assert img.reference == ""
    with pytest.raises(ImageNotFound, match="lightabaco images pull busybox"):
        store.get("busybox")
    assert store.get(w.config_digest).config_digest == w.config_digest
    assert store.get(w.config_digest[7:19]).config_digest == w.config_digest  # short ID
    assert store.tag(w.config_digest, "busybox") == "docker.io/library/busybox:latest"
    assert store.get("docker.io/library/busybox").reference == "docker.io/library/busybox:latest"
    assert store.get("busybox:latest").rootfs == img.rootfs
    (img2,) = store.import_path(tmp_path / "bb", tag="abacosamples/wc")
    assert store.get("abacosamples/wc").reference == "docker.io/abacosamples/wc:latest"
    assert store.ensure("abacosamples/wc").config_digest == img2.config_digest
    with pytest.raises(ImageNotFound, match="no image with ID"):
        store.get("sha256:" + "0" * 64)


def test_docker25_archive_names_come_from_manifest_json(tmp_path: Path) -> None:
    w = small_image(ref="latest")
    layout = w.write_layout(tmp_path / "l")
    (layout / "manifest.json").write_bytes(canonical_json(
        [{"Config": f"blobs/sha256/{w.config_digest[7:]}", "RepoTags": ["team/app:2"], "Layers": []}]))
    (img,) = ImageStore(tmp_path / "s").import_path(layout)
    assert img.reference == "docker.io/team/app:2"


def test_tag_with_several_images_is_refused(tmp_path: Path) -> None:
    a, b = small_image(ref="localhost/a:1"), small_image(ref="localhost/b:1", marker="other")
    layout = a.write_layout(tmp_path / "l")
    b.write_layout(tmp_path / "l2")
    for blob in (tmp_path / "l2/blobs/sha256").iterdir():
        (layout / "blobs/sha256" / blob.name).write_bytes(blob.read_bytes())
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] += json.loads((tmp_path / "l2/index.json").read_text())["manifests"]
    (layout / "index.json").write_text(json.dumps(index))
    store = ImageStore(tmp_path / "s")
    with pytest.raises(ImageError, match="holds 2 images"):
        store.import_path(layout, tag="one")
    assert len(store.import_path(layout)) == 2
    assert store.get("localhost/b:1").config_digest == b.config_digest


def test_foreign_architecture_is_refused(tmp_path: Path) -> None:
    other = "arm64" if host_arch() != "arm64" else "amd64"
    w = small_image(arch=other)
    with pytest.raises(ImageError, match=f"built for linux/{other}"):
        ImageStore(tmp_path / "s").import_path(w.write_layout(tmp_path / "l"))


def test_layout_with_platform_index_picks_the_host(tmp_path: Path) -> None:
    other = "arm64" if host_arch() != "arm64" else "amd64"
    mine, theirs = small_image(marker="mine"), small_image(arch=other, marker="theirs")
    layout = mine.write_layout(tmp_path / "l")
    theirs.write_layout(layout)  # both images' blobs in one layout
    idx = image_index([theirs, mine])
    (layout / "blobs/sha256" / OciLayoutWriter()._blob(idx)[7:]).write_bytes(idx)
    from tests.fixtures.oci import sha256
    (layout / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(idx), "size": len(idx),
         "annotations": {"org.opencontainers.image.ref.name": "localhost/multi:1"}}]}))
    (img,) = ImageStore(tmp_path / "s").import_path(layout)
    assert (img.rootfs / "etc/marker").read_text() == "mine" and img.reference == "localhost/multi:1"


def test_corrupt_layer_blob_is_rejected(tmp_path: Path) -> None:
    w = small_image()
    layout = w.write_layout(tmp_path / "l")
    blob = layout / "blobs/sha256" / w.layers[1]["digest"][7:]
    import gzip
    blob.write_bytes(gzip.compress(b"\0" * 1024, mtime=0))
    store = ImageStore(tmp_path / "s")
    with pytest.raises(ImageError, match="digest"):
        store.import_path(layout)
    assert store.list() == []
    assert os.listdir(tmp_path / "s/rootfs") == []


def test_not_an_image_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    store = ImageStore(tmp_path / "s")
    with pytest.raises(ImageError, match="neither index.json"):
        store.import_path(tmp_path / "junk")
    with pytest.raises(ImageError, match="not a readable tar"):
        store.import_path(tmp_path / "junk.tar")
    with pytest.raises(ImageError, match="does not exist"):
        store.import_path(tmp_path / "missing")


def test_remove_and_gc(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    a = small_image(ref="localhost/a:1")
    b = small_image(ref="localhost/b:1", marker="b")
    (ia,) = store.import_path(a.write_layout(tmp_path / "a"))
    (ib,) = store.import_path(b.write_layout(tmp_path / "b"))
    store.tag("localhost/a:1", "localhost/a:alias")
    assert store.remove("localhost/a:1") == a.config_digest
    assert ia.rootfs.exists()  # still named localhost/a:alias
    store.remove("localhost/a:alias")
    assert not ia.rootfs.exists()
    assert not (tmp_path / "s/blobs/sha256" / a.layers[0]["digest"][7:]).exists()
    assert ib.rootfs.exists() and (tmp_path / "s/blobs/sha256" / b.layers[0]["digest"][7:]).exists()
    with pytest.raises(ImageNotFound):
        store.remove("localhost/a:1")
    # an unnamed image is garbage; gc frees it and reports the bytes
    (unnamed,) = store.import_path(small_image(ref="latest", marker="unnamed").write_layout(tmp_path / "u"))
    assert any(e["reference"] == "" for e in store.list())
    assert store.gc() > 0
    assert not unnamed.rootfs.exists() and ib.rootfs.exists()
    assert store.gc() == 0
    store.remove(b.config_digest)  # by ID: all its names
    assert store.list() == []


def test_gc_deletes_read_only_dirs(tmp_path: Path) -> None:
    w = OciLayoutWriter()
    w.add_layer([dir("ro", 0o555), dir("ro/deeper", 0o500), file("ro/deeper/f", "x", mode=0o400)])
    w.finish({}, ref="latest")
    store = ImageStore(tmp_path / "s")
    (img,) = store.import_path(w.write_layout(tmp_path / "l"))
    assert store.gc() > 0
    assert not img.rootfs.exists()


def test_rootfs_is_traversable_by_other_users(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    (img,) = store.import_path(busybox_layout(tmp_path / "bb", ref="localhost/bb:1").dest or tmp_path / "bb")
    for p in (tmp_path / "s", tmp_path / "s/rootfs", img.rootfs.parent):
        assert stat.S_IMODE(p.stat().st_mode) & 0o011 == 0o011, p
    assert stat.S_IMODE(img.rootfs.stat().st_mode) == 0o755
    assert stat.S_IMODE((img.rootfs / "etc/passwd").stat().st_mode) == 0o644
    assert stat.S_IMODE((img.rootfs / "bin/busybox").stat().st_mode) == 0o755


def test_progress_events(tmp_path: Path) -> None:
    events: list[tuple[str, int, int | None, str]] = []
    store = ImageStore(tmp_path / "s")
    store.import_path(small_image().write_layout(tmp_path / "l"), progress=lambda *a: events.append(a))
    kinds = {e[0] for e in events}
    assert kinds == {"import", "unpack"}
    unpack = [e for e in events if e[0] == "unpack"]
    assert unpack[-1][1] == unpack[-1][2]  # ends at 100 %
    assert all(isinstance(e[3], str) for e in events)


def test_stale_staging_dirs_are_cleaned_but_live_ones_kept(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    tmp = tmp_path / "s/tmp"
    (tmp / "crashed").mkdir()
    (tmp / "crashed/rootfs").mkdir(mode=0o500)  # even unwritable leftovers go
    (tmp / "crashed.lock").touch()
    (tmp / "orphan").mkdir()
    (tmp / "live").mkdir()
    (tmp / "live.lock").touch()
    old = time.time() - 3600
    for n in ("crashed", "crashed.lock", "orphan", "live", "live.lock"):
        os.utime(tmp / n, (old, old))
    fd = os.open(tmp / "live.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # flock is per open file: a new store in this process sees it locked
    try:
        ImageStore(tmp_path / "s")
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp)) == ["live", "live.lock"]
    del store


def _import_worker(args: tuple[str, str]) -> str:
    store_dir, layout = args
    (img,) = ImageStore(store_dir).import_path(layout)
    return img.config_digest


def test_concurrent_imports_from_several_processes(tmp_path: Path) -> None:
    layout = busybox_layout(tmp_path / "bb", ref="localhost/bb:1").dest or tmp_path / "bb"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        digests = pool.map(_import_worker, [(str(tmp_path / "s"), str(tmp_path / "bb"))] * 3)
    assert len(set(digests)) == 1
    store = ImageStore(tmp_path / "s")
    assert len(os.listdir(tmp_path / "s/rootfs")) == 1
    assert [e["reference"] for e in store.list()] == ["localhost/bb:1"]
    assert (store.get("localhost/bb:1").rootfs / "bin/busybox").stat().st_size > 100_000
    assert [n for n in os.listdir(tmp_path / "s/tmp")] == []
    del layout


def test_fixture_busybox_image(busybox_image) -> None:  # type: ignore[no-untyped-def]
    assert busybox_image.config.cmd == ["/bin/sh", "-c", "echo hello"]
    assert (busybox_image.rootfs / "bin/sh").is_symlink()
    assert "app:x:1000:1000" in (busybox_image.rootfs / "etc/passwd").read_text()


def test_rootfs_owner_when_running_as_root(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    store = ImageStore(tmp_path / "s", rootfs_owner=(65534, 65534))
    (img,) = store.import_path(small_image().write_layout(tmp_path / "l"))
    for p in (img.rootfs, img.rootfs / "etc/marker", img.rootfs / "bin/sh", img.rootfs / "_abaco_binary_data"):
        st = os.lstat(p)
        assert (st.st_uid, st.st_gid) == (65534, 65534), p
    assert store.gc() == 0 and store.remove("localhost/small:1")  # root can still delete it
    assert not img.rootfs.exists()


def test_reimport_as_docker_archive_keeps_the_stored_manifest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    w = small_image()
    store.import_path(w.write_layout(tmp_path / "l"))
    store.import_path(w.write_docker_archive(tmp_path / "d.tar", ["localhost/small:1"]))
    (entry,) = store.list()
    assert entry["manifest"] == w.manifest_digest
    assert store.gc() == 0  # layers still referenced: the rootfs can be rebuilt
    import shutil
    shutil.rmtree(store.get("localhost/small:1").rootfs.parent)
    assert (store.get("localhost/small:1").rootfs / "etc/marker").read_text() == "v1"


def _docker_tar(path: Path, members: dict[str, bytes | str]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            t = tarfile.TarInfo(name)
            if isinstance(data, str):  # a symlink
                t.type, t.linkname = tarfile.SYMTYPE, data
                tf.addfile(t)
            else:
                t.size = len(data)
                tf.addfile(t, io.BytesIO(data))
    return path


def test_hostile_docker_archive_cannot_read_host_files(tmp_path: Path) -> None:
    w = small_image()
    cfg_name = w.config_digest[7:] + ".json"
    store = ImageStore(tmp_path / "s")
    # a layer that is an in-archive symlink to a host file
    evil = _docker_tar(tmp_path / "evil1.tar", {
        "manifest.json": canonical_json([{"Config": cfg_name, "RepoTags": ["x:1"], "Layers": ["l.tar", "m.tar"]}]),
        cfg_name: w.config_bytes, "l.tar": "/etc/passwd", "m.tar": "../../../etc/passwd"})
    with pytest.raises(ImageError, match="missing or not a file"):
        store.import_path(evil)
    # names with .. in manifest.json
    evil2 = _docker_tar(tmp_path / "evil2.tar", {
        "manifest.json": canonical_json([{"Config": cfg_name, "RepoTags": [], "Layers": ["../x.tar", "y.tar"]}]),
        cfg_name: w.config_bytes})
    with pytest.raises(ImageError, match="outside the image"):
        store.import_path(evil2)
    # the same as an extracted directory: the config path must stay inside it
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir/manifest.json").write_bytes(canonical_json([{"Config": "../secret.json", "Layers": []}]))
    (tmp_path / "secret.json").write_text("{}")
    with pytest.raises(ImageError, match="outside the image"):
        store.import_path(tmp_path / "dir")
    assert store.list() == []


def test_second_format_of_an_unpacked_image_still_stores_its_layers(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "s")
    gz, zst = small_image("gzip"), small_image("zstd")
    store.import_path(gz.write_docker_archive(tmp_path / "d.tar", ["localhost/small:1"]))
    (img,) = store.import_path(zst.write_layout(tmp_path / "z"))  # same image ID, already unpacked
    for layer in zst.layers:
        assert store.has_blob(layer["digest"])
    store.gc()
    import shutil
    shutil.rmtree(img.rootfs.parent)
    assert (store.get("localhost/small:1").rootfs / "app/run.sh").exists()


@pytest.mark.parametrize("part, value", [
    ("manifest", []), ("manifest", {"config": "x", "layers": "y"}), ("manifest", {"config": {}, "layers": []}),
    ("manifest", {"config": {"digest": "sha256:zz"}}), ("config", {"rootfs": "x", "config": ["y"]}),
    ("config", {"rootfs": {"diff_ids": ["nope"]}, "config": {}}), ("index", {"manifests": [1]}),
    ("index", []),
])
def test_malformed_json_shapes_are_image_errors(tmp_path: Path, part: str, value: object) -> None:
    """Whatever shape the JSON documents take, import fails with ImageError, never a crash."""
    w = small_image()
    layout = w.write_layout(tmp_path / "l")
    data = json.dumps(value).encode()
    if part == "index":
        (layout / "index.json").write_bytes(data)
    else:
        from tests.fixtures.oci import sha256
        old = w.manifest_digest if part == "manifest" else w.config_digest
        new = sha256(data)
        (layout / "blobs/sha256" / new[7:]).write_bytes(data)
        if part == "manifest":
            index = (layout / "index.json").read_text().replace(old, new)
            (layout / "index.json").write_text(index)
        else:
            man = w.manifest_bytes.replace(old.encode(), new.encode())
            (layout / "blobs/sha256" / sha256(man)[7:]).write_bytes(man)
            index = (layout / "index.json").read_text().replace(w.manifest_digest, sha256(man))
            (layout / "index.json").write_text(index)
    with pytest.raises(ImageError):
        ImageStore(tmp_path / "s").import_path(layout)
