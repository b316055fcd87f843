"""The safe unpacker: OCI layer semantics, and hostile layers that must stay inside the rootfs."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from lightabaco.sandbox.errors import ImageError
from lightabaco.images import ImageStore, UnpackLimits
from lightabaco.images.unpack import LayerSource, Unpacker, prepare_rootfs, secure_resolve
from tests.fixtures.oci import (OciLayoutWriter, chardev, dir, fifo, file, hardlink, opaque, sha256, symlink,
                                tar_bytes, whiteout)


def import_layers(tmp_path: Path, layers: list[list], compression: str = "gzip",
                  config: dict | None = None, **store_kwargs) -> Path:
    """Import an image made of `layers` and return its rootfs."""
    w = OciLayoutWriter()
    for entries in layers:
        w.add_layer(entries, compression)
    w.finish(config or {"Cmd": ["/bin/true"]})
    w.write_layout(tmp_path / "layout")
    store = ImageStore(tmp_path / "store", **store_kwargs)
    (image,) = store.import_path(tmp_path / "layout", tag="t")
    return image.rootfs


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


# ---------------------------------------------------------------------------------------------------
# Layer semantics (sandbox-notes §11 fixture "good")


def test_good_image_layers_whiteouts_hardlinks_and_modes(tmp_path: Path) -> None:
    layer1 = [
        dir("a"), file("a/keep", "k"), file("a/gone", "g"), file("a/hl-src", "same inode"),
        hardlink("a/hl", "a/hl-src"),
        dir("b"), file("b/old1"), dir("b/sub"), file("b/sub/old2"),
        dir("usr"), dir("usr/lib"), symlink("lib", "usr/lib"),
        dir("ro", 0o555), file("ro/f", "f"),
        file("suid", "#!/bin/sh\n", mode=0o4755), file("sgid", "x", mode=0o2750),
        chardev("devnull"), fifo("pipe"),
        symlink("abs-link", "/usr/lib"),
    ]
    layer2 = [whiteout("a/gone"), dir("b"), file("b/new", "n"), opaque("b"), file("lib/via-symlink.so", "so"),
              hardlink("a/hl2", "a/hl-src"), file("ro/g", "g")]
    layer3 = [dir("app"), file("app/run.sh", "#!/bin/sh\necho hi\n", mode=0o755)]
    w = OciLayoutWriter()
    w.add_layer(layer1, "gzip")
    w.add_layer(layer2, "gzip")
    w.add_layer(layer3, "zstd")
    w.finish({"Entrypoint": ["/app/run.sh"], "WorkingDir": "/work", "User": "1000:1000"})
    w.write_layout(tmp_path / "layout")
    (img,) = ImageStore(tmp_path / "store").import_path(tmp_path / "layout", tag="good")
    r = img.rootfs

    assert (r / "a/keep").read_text() == "k"
    assert not (r / "a/gone").exists()
    assert sorted(os.listdir(r / "b")) == ["new"]  # opaque: lower b/old1 and b/sub gone, same-layer b/new kept
    assert (r / "usr/lib/via-symlink.so").read_text() == "so"  # written through lower lib -> usr/lib
    assert (r / "lib").is_symlink()
    ino = os.stat(r / "a/hl-src").st_ino
    assert os.stat(r / "a/hl").st_ino == ino == os.stat(r / "a/hl2").st_ino
    assert os.stat(r / "a/hl-src").st_nlink == 3
    assert mode(r / "suid") == 0o755 and mode(r / "sgid") == 0o750  # setuid/setgid dropped
    assert not os.path.lexists(r / "devnull")  # device nodes skipped
    assert stat.S_ISFIFO(os.lstat(r / "pipe").st_mode)
    assert (r / "ro/g").read_text() == "g"  # the 0555 dir received a file from an upper layer
    assert mode(r / "ro") == 0o755  # u+rwx kept so gc can delete it
    assert os.readlink(r / "abs-link") == "/usr/lib"  # symlinks kept verbatim
    assert mode(r / "app/run.sh") == 0o755
    # prepare step: mount points, WorkingDir, bind targets
    for d in ("proc", "dev", "sys", "tmp", "run", "work"):
        assert (r / d).is_dir() and not (r / d).is_symlink(), d
    for f in ("etc/hosts", "etc/hostname", "etc/resolv.conf", "_abaco_binary_data", "_abaco_results.sock"):
        assert (r / f).is_file(), f
    assert img.config.entrypoint == ["/app/run.sh"] and img.config.user == "1000:1000"


def test_later_layer_replaces_file_with_dir_and_dir_with_symlink(tmp_path: Path) -> None:
    r = import_layers(tmp_path, [
        [file("x", "file"), dir("y"), file("y/inner")],
        [dir("x"), file("x/child", "c"), symlink("y", "/x")],
    ])
    assert (r / "x/child").read_text() == "c"
    assert os.readlink(r / "y") == "/x"


def test_whiteout_in_same_layer_only_hides_lower_entries(tmp_path: Path) -> None:
    r = import_layers(tmp_path, [[file("lower", "l")], [file("mine", "m"), whiteout("mine"), whiteout("lower")]])
    assert (r / "mine").read_text() == "m"
    assert not (r / "lower").exists()


def test_opaque_marker_position_does_not_matter(tmp_path: Path) -> None:
    r = import_layers(tmp_path, [[dir("d"), file("d/old"), dir("d/keepdir"), file("d/keepdir/old2")],
                                 [opaque("d"), dir("d"), dir("d/keepdir"), file("d/keepdir/new")]])
    assert sorted(os.listdir(r / "d")) == ["keepdir"]
    assert os.listdir(r / "d/keepdir") == ["new"]


def test_aufs_metadata_whiteouts_are_ignored(tmp_path: Path) -> None:
    r = import_layers(tmp_path, [[file("f", "x"), file(".wh..wh.plnk/123.456", "junk")]])
    assert (r / "f").exists() and not (r / ".wh..wh.plnk").exists()


def test_uncompressed_and_zstd_layers_unpack_the_same(tmp_path: Path) -> None:
    entries = [dir("etc"), file("etc/motd", "hi")]
    a = import_layers(tmp_path / "a", [entries], compression="none")
    b = import_layers(tmp_path / "b", [entries], compression="zstd")
    assert (a / "etc/motd").read_text() == (b / "etc/motd").read_text() == "hi"


# ---------------------------------------------------------------------------------------------------
# Hostile layers (sandbox-notes §4.2): rejected, or contained, never writing outside


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    s = tmp_path / "sentinel"
    s.mkdir()
    (s / "precious").write_text("keep me")
    return s


def assert_untouched(sentinel: Path) -> None:
    assert sorted(os.listdir(sentinel)) == ["precious"]
    assert (sentinel / "precious").read_text() == "keep me"


def test_dotdot_entry_is_rejected(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match=r"\.\..*path traversal"):
        import_layers(tmp_path, [[file("../../sentinel/escape-dotdot", "x")]])
    assert_untouched(sentinel)
    assert os.listdir(tmp_path / "store/rootfs") == []  # nothing half-made left behind
    assert [n for n in os.listdir(tmp_path / "store/tmp") if not n.startswith("refs-")] == []


def test_absolute_entry_lands_inside_rootfs(tmp_path: Path, sentinel: Path) -> None:
    r = import_layers(tmp_path, [[file(f"{sentinel}/escape-abs", "x")]])
    assert_untouched(sentinel)
    assert (r / str(sentinel).lstrip("/") / "escape-abs").read_text() == "x"


def test_absolute_symlink_parent_is_resolved_inside_rootfs(tmp_path: Path, sentinel: Path) -> None:
    r = import_layers(tmp_path, [[symlink("evil", str(sentinel)), file("evil/escape-symlink", "x")]])
    assert_untouched(sentinel)
    assert (r / str(sentinel).lstrip("/") / "escape-symlink").read_text() == "x"


def test_relative_symlink_climbing_out_is_clamped_at_root(tmp_path: Path, sentinel: Path) -> None:
    up = "../" * 12 + str(sentinel).lstrip("/")
    r = import_layers(tmp_path, [[dir("d"), symlink("d/up", up), file("d/up/escape-rel", "x")]])
    assert_untouched(sentinel)
    assert (r / str(sentinel).lstrip("/") / "escape-rel").read_text() == "x"


def test_symlink_planted_in_lower_layer_cannot_redirect_upper_layer(tmp_path: Path, sentinel: Path) -> None:
    # The attack that escapes a naive per-layer `tar -x`.
    r = import_layers(tmp_path, [[symlink("evil", str(sentinel))], [file("evil/pwned", "x")]])
    assert_untouched(sentinel)
    assert (r / str(sentinel).lstrip("/") / "pwned").exists()


def test_hardlink_to_host_file_is_rejected(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match="hard link 'hl'.*does not exist"):
        import_layers(tmp_path, [[hardlink("hl", str(sentinel / "precious"))]])
    assert_untouched(sentinel)


def test_hardlink_through_symlink_to_host_file_is_rejected(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match="hard link"):
        import_layers(tmp_path, [[symlink("s", str(sentinel)), hardlink("hl", "s/precious")]])
    assert_untouched(sentinel)
    assert os.stat(sentinel / "precious").st_nlink == 1


def test_hardlink_dotdot_target_is_rejected(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match=r"\.\."):
        import_layers(tmp_path, [[hardlink("hl", "../sentinel/precious")]])
    assert_untouched(sentinel)


def test_whiteout_pointing_outside_is_rejected(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match=r"\.\."):
        import_layers(tmp_path, [[file("f")], [file("../sentinel/.wh.precious")]])
    assert_untouched(sentinel)


def test_whiteout_through_symlink_stays_inside(tmp_path: Path, sentinel: Path) -> None:
    import_layers(tmp_path, [[symlink("s", str(sentinel))], [file("s/.wh.precious")]])
    assert_untouched(sentinel)


def test_regular_file_replaces_symlink_instead_of_writing_through_it(tmp_path: Path, sentinel: Path) -> None:
    target = sentinel / "escape-overwrite"
    r = import_layers(tmp_path, [[symlink("x", str(target))], [file("x", "payload")]])
    assert not target.exists()
    assert not (r / "x").is_symlink() and (r / "x").read_text() == "payload"
    assert_untouched(sentinel)


def test_same_layer_symlink_then_file_does_not_write_through(tmp_path: Path, sentinel: Path) -> None:
    r = import_layers(tmp_path, [[symlink("x", str(sentinel / "precious")), file("x", "payload")]])
    assert_untouched(sentinel)
    assert (r / "x").read_text() == "payload"


def test_prepare_does_not_follow_symlinked_bind_targets_outside(tmp_path: Path, sentinel: Path) -> None:
    r = import_layers(tmp_path, [[symlink("etc", str(sentinel)), symlink("run", "/var/run")]])
    assert_untouched(sentinel)
    # etc holds bind targets: the link is replaced by a real directory made by the unpacker (issue 8)
    assert not os.path.islink(r / "etc") and (r / "etc/hosts").is_file()
    assert os.path.islink(r / "run")  # nothing is mounted on /run: an existing entry is left alone


def test_file_under_a_regular_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a directory"):
        import_layers(tmp_path, [[file("f", "x"), file("f/child", "y")]])


# ---------------------------------------------------------------------------------------------------
# Limits, verification, resolution


def test_byte_limit_stops_zip_bombs(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="more than 1000 bytes"):
        import_layers(tmp_path, [[file("big", b"\0" * 5000)]], limits=UnpackLimits(max_bytes=1000))


def test_entry_and_depth_limits(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="more than 3 layer entries"):
        import_layers(tmp_path / "a", [[file(f"f{i}") for i in range(5)]], limits=UnpackLimits(max_entries=3))
    with pytest.raises(ImageError, match="directories deep"):
        import_layers(tmp_path / "b", [[file("/".join(["d"] * 20))]], limits=UnpackLimits(max_depth=10))


def test_symlink_loop_in_parent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="too many levels of symbolic links"):
        import_layers(tmp_path, [[symlink("a", "b"), symlink("b", "a"), file("a/x")]])


def _layer(raw: bytes, digest: str | None, diff_id: str | None) -> LayerSource:
    return LayerSource(open=lambda: io.BytesIO(raw), digest=digest, diff_id=diff_id)


def test_diff_id_mismatch_is_rejected(tmp_path: Path) -> None:
    raw = tar_bytes([file("f", "x")])
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(ImageError, match="diff_id"):
        Unpacker(root).apply([_layer(raw, None, sha256(b"something else"))])


def test_compressed_digest_mismatch_is_rejected(tmp_path: Path) -> None:
    import gzip

    raw = tar_bytes([file("f", "x")])
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(ImageError, match="compressed digest"):
        Unpacker(root).apply([_layer(gzip.compress(raw), sha256(b"nope"), sha256(raw))])


def test_not_a_tar_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(ImageError, match="not a tar|broken tar"):
        Unpacker(root).apply([_layer(b"this is not a tar archive" * 40, None, None)])


def test_secure_resolve_has_chroot_semantics(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    os.symlink("/usr/lib", root / "lib")
    os.symlink("../../../../..", root / "up")
    assert secure_resolve(root, ["lib"]) == root / "usr/lib"
    assert secure_resolve(root, ["up", "usr"]) == root / "usr"
    with pytest.raises(ImageError, match="does not exist"):
        secure_resolve(root, ["nope"])
    assert secure_resolve(root, ["up", "new", "dir"], create=True) == root / "new/dir"


def test_prepare_rootfs_keeps_existing_entries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 custom\n")
    prepare_rootfs(root, "/srv/app")
    assert (root / "etc/hosts").read_text() == "127.0.0.1 custom\n"
    assert (root / "srv/app").is_dir() and mode(root / "srv") == 0o755
    assert mode(root / "tmp") == 0o1777


def test_working_dir_with_dotdot_is_refused(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match="WorkingDir"):
        import_layers(tmp_path, [[file("f")]], config={"WorkingDir": "/../../sentinel/wd"})
    assert_untouched(sentinel)


def test_truncated_or_trailing_garbage_gzip_is_an_image_error(tmp_path: Path) -> None:
    import gzip

    raw = tar_bytes([file("f", "x" * 5000)])
    gz = gzip.compress(raw, mtime=0)
    for i, blob in enumerate((gz[: len(gz) // 2], gz + b"garbage-after-the-member")):
        root = tmp_path / f"r{i}"
        root.mkdir()
        with pytest.raises(ImageError, match="decompress|broken tar|truncated"):
            Unpacker(root).apply([_layer(blob, None, None)])
