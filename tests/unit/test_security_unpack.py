"""Hostile layers against the unpacker (issue 8, items 1, 7b and 8): nothing outside the rootfs changes.

Each attack builds its layers in the test, puts a sentinel tree outside the store (a file and a
directory with known modes, mtimes and contents) and compares the sentinel before and after. The
fuzz test at the end throws random layers at the unpacker with hypothesis.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from lightabaco.sandbox.errors import ImageError
from lightabaco.images import ImageStore, UnpackLimits
from lightabaco.images.store import StoreQuota
from lightabaco.images.unpack import (MOUNT_DIRS, MOUNT_FILES, LayerSource, Unpacker, chown_tree,
                                              prepare_rootfs, tree_size)
from lightabaco.sandbox.safepath import UnsafePath, open_beneath, walk_tree
from tests.fixtures.oci import Entry, OciLayoutWriter, dir, file, hardlink, opaque, symlink, tar_bytes

OLD = 1_000_000_000  # the sentinel's mtime: any change to it shows


def _layout(tmp_path: Path, layers: list[list[Entry]], config: dict | None = None) -> Path:
    w = OciLayoutWriter()
    for entries in layers:
        w.add_layer(entries, "gzip")
    w.finish(config or {"Cmd": ["/bin/true"]})
    w.write_layout(tmp_path / "layout")
    return tmp_path / "layout"


def import_layers(tmp_path: Path, layers: list[list[Entry]], config: dict | None = None, **kw) -> Path:
    store = ImageStore(tmp_path / "store", **kw)
    (image,) = store.import_path(_layout(tmp_path, layers, config), tag="t")
    return image.rootfs


def make_sentinel(base: Path) -> Path:
    s = base / "sentinel"
    s.mkdir()
    (s / "precious").write_text("keep me")
    (s / "sub").mkdir()
    (s / "sub" / "deep").write_text("deep")
    os.chmod(s / "precious", 0o640)
    os.chmod(s / "sub" / "deep", 0o600)
    os.chmod(s / "sub", 0o750)
    os.chmod(s, 0o750)
    for p in (s / "sub" / "deep", s / "precious", s / "sub", s):
        os.utime(p, (OLD, OLD))
    return s


def snapshot(top: Path) -> dict[str, tuple]:
    """Everything about a tree that an escape could change: names, types, modes, owners, mtimes, data."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in ["."] + dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = b""
            if stat.S_ISREG(st.st_mode):
                data = hashlib.sha256(Path(p).read_bytes()).digest()
            out[os.path.relpath(p, top)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                            st.st_gid, st.st_mtime_ns, st.st_nlink, data)
    return out


@pytest.fixture
def sentinel(tmp_path: Path):
    s = make_sentinel(tmp_path)
    before = snapshot(s)
    outside_before = sorted(os.listdir(tmp_path))
    yield s
    assert snapshot(s) == before, "the unpacker changed a file outside the rootfs"
    assert set(os.listdir(tmp_path)) <= set(outside_before) | {"store", "layout"}, "something was created outside"


def inside(root: Path, host_path: Path) -> Path:
    return root / str(host_path).lstrip("/")


def dir_at(name: str, mode: int = 0o777, mtime: int = 12345) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode, mtime=mtime)


# ---------------------------------------------------------------------------------------------------
# Item 1: deferred modes, mtimes and other actions never go through a symlink


@pytest.mark.parametrize("same_layer", [True, False])
@pytest.mark.parametrize("target", ["precious", "sub", ""])
def test_dir_replaced_by_symlink_then_mode_pass(tmp_path: Path, sentinel: Path, same_layer: bool,
                                                target: str) -> None:
    host = sentinel / target if target else sentinel
    swap = [dir_at("d", 0o777), dir_at("d/e", 0o777)]
    evil = [symlink("d", str(host))]
    layers = [swap + evil] if same_layer else [swap, evil]
    r = import_layers(tmp_path, layers)
    assert os.readlink(r / "d") == str(host)


def test_implicit_parent_replaced_by_symlink(tmp_path: Path, sentinel: Path) -> None:
    # p and p/q are created implicitly (recorded for mode 0755), then p becomes a link to the host.
    import_layers(tmp_path, [[file("p/q/f", "x")], [symlink("p", str(sentinel / "sub"))]])


def test_symlink_swap_then_mtime(tmp_path: Path, sentinel: Path) -> None:
    import_layers(tmp_path, [[dir_at("d", 0o700, mtime=5), file("d/f")],
                             [symlink("d", str(sentinel / "precious"))]])


def test_root_dot_entry_and_dir_swapped_deep(tmp_path: Path, sentinel: Path) -> None:
    up = "../" * 15 + str(sentinel).lstrip("/")
    import_layers(tmp_path, [[dir_at("./", 0o755), dir_at("a", 0o777), dir_at("a/b", 0o777)],
                             [symlink("a/b", up), dir_at("a/b", 0o777)]])


def test_hardlink_through_symlinked_parent(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match="hard link"):
        import_layers(tmp_path, [[symlink("s", str(sentinel)), hardlink("hl", "s/precious")]])
    assert os.stat(sentinel / "precious").st_nlink == 1


def test_hardlink_whose_target_parent_became_a_symlink(tmp_path: Path, sentinel: Path) -> None:
    with pytest.raises(ImageError, match="hard link"):
        import_layers(tmp_path, [[dir("d"), file("d/f")],
                                 [symlink("d", str(sentinel)), hardlink("hl", "d/precious")]])
    assert os.stat(sentinel / "precious").st_nlink == 1


def test_hardlink_to_symlink_links_the_symlink_not_its_target(tmp_path: Path, sentinel: Path) -> None:
    r = import_layers(tmp_path, [[symlink("s", str(sentinel / "precious")), hardlink("hl", "s")]])
    assert os.path.islink(r / "hl") and os.readlink(r / "hl") == str(sentinel / "precious")
    assert os.stat(sentinel / "precious").st_nlink == 1


def test_hardlink_over_symlinked_destination(tmp_path: Path, sentinel: Path) -> None:
    # the link's own name is a symlink to the host: it is replaced, never written through
    r = import_layers(tmp_path, [[file("src", "mine"), symlink("dst", str(sentinel / "precious"))],
                                 [hardlink("dst", "src")]])
    assert (r / "dst").read_text() == "mine" and not os.path.islink(r / "dst")


@pytest.mark.parametrize("relative", [False, True])
def test_whiteout_through_symlinked_parent(tmp_path: Path, sentinel: Path, relative: bool) -> None:
    link = "../" * 15 + str(sentinel).lstrip("/") if relative else str(sentinel)
    import_layers(tmp_path, [[dir("d"), symlink("d/s", link)],
                             [file("d/s/.wh.precious"), file("d/s/sub/.wh.deep")]])


@pytest.mark.parametrize("relative", [False, True])
def test_opaque_whiteout_in_symlinked_dir(tmp_path: Path, sentinel: Path, relative: bool) -> None:
    link = "../" * 15 + str(sentinel).lstrip("/") if relative else str(sentinel)
    import_layers(tmp_path, [[dir("d"), symlink("d/s", link)], [opaque("d/s"), opaque("d/s/sub")]])


def test_opaque_prune_does_not_descend_into_symlinks(tmp_path: Path, sentinel: Path) -> None:
    # d/x is added by this layer as a dir, then replaced by a link to the host in the same layer:
    # the opaque pass keeps what this layer added, and must not recurse through the link.
    r = import_layers(tmp_path, [[dir("d"), file("d/old")],
                                 [opaque("d"), dir("d/x"), file("d/x/keep"), symlink("d/x", str(sentinel))]])
    assert sorted(os.listdir(r / "d")) == ["x"] and os.path.islink(r / "d/x")


def test_file_entry_whose_parent_became_a_symlink(tmp_path: Path, sentinel: Path) -> None:
    r = import_layers(tmp_path, [[dir("d"), file("d/a")],
                                 [symlink("d", str(sentinel)), file("d/precious", "pwned"),
                                  dir_at("d/sub", 0o777), file("d/sub/deep", "pwned")]])
    assert inside(r, sentinel / "precious").read_text() == "pwned"


def test_fifo_over_symlink_is_not_chmodded_through(tmp_path: Path, sentinel: Path) -> None:
    fifo = Entry("p", tarfile.FIFOTYPE, mode=0o777)
    r = import_layers(tmp_path, [[symlink("p", str(sentinel / "precious"))], [fifo]])
    assert stat.S_ISFIFO(os.lstat(r / "p").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_chown_of_the_tree_never_follows_links(tmp_path: Path, sentinel: Path) -> None:
    r = import_layers(tmp_path, [[symlink("s", str(sentinel)), symlink("p", str(sentinel / "precious")),
                                  dir("d"), symlink("d/up", "../" * 15 + str(sentinel).lstrip("/"))]],
                      rootfs_owner=(4242, 4243))
    assert os.lstat(r / "s").st_uid == 4242 and os.lstat(r / "d").st_gid == 4243


def test_chown_tree_and_tree_size_do_not_follow(tmp_path: Path, sentinel: Path) -> None:
    root = tmp_path / "store"  # named so the sentinel fixture accepts it
    root.mkdir()
    (root / "f").write_bytes(b"x" * 10)
    os.symlink(str(sentinel), root / "s")
    (sentinel / "sub" / "deep").stat()
    assert tree_size(root) == (10, 2)
    if os.geteuid() == 0:
        chown_tree(root, 4242, 4242)
        assert os.lstat(root / "s").st_uid == 4242


# ---------------------------------------------------------------------------------------------------
# Item 8: mount points are plain files and directories made by lightabaco


def test_mount_points_that_are_symlinks_are_replaced(tmp_path: Path, sentinel: Path) -> None:
    layer = [symlink(name, str(sentinel / "precious")) for name in MOUNT_FILES if "/" not in name]
    layer += [symlink(name, str(sentinel / "sub")) for name in MOUNT_DIRS if "/" not in name]
    layer += [symlink("etc", "/oldroot" + str(sentinel)), dir("srv"), symlink("srv/app", str(sentinel))]
    r = import_layers(tmp_path, [layer], config={"WorkingDir": "/srv/app/work", "Cmd": ["/bin/true"]})
    for name in MOUNT_DIRS:
        assert stat.S_ISDIR(os.lstat(r / name).st_mode), name
    for name in MOUNT_FILES:
        assert stat.S_ISREG(os.lstat(r / name).st_mode), name
    assert stat.S_ISDIR(os.lstat(r / "etc").st_mode)
    assert stat.S_ISDIR(os.lstat(r / "srv/app").st_mode) and stat.S_ISDIR(os.lstat(r / "srv/app/work").st_mode)


def test_mount_points_of_other_types_are_replaced(tmp_path: Path, sentinel: Path) -> None:
    fifo = Entry("_abaco_results.sock", tarfile.FIFOTYPE, mode=0o644)
    r = import_layers(tmp_path, [[fifo, file("proc", "not a dir"), dir("_abaco_binary_data"),
                                  file("_abaco_binary_data/x"), dir("etc"), dir("etc/hosts")]])
    assert stat.S_ISREG(os.lstat(r / "_abaco_results.sock").st_mode)
    assert stat.S_ISREG(os.lstat(r / "_abaco_binary_data").st_mode)
    assert stat.S_ISREG(os.lstat(r / "etc/hosts").st_mode)
    assert stat.S_ISDIR(os.lstat(r / "proc").st_mode)


def test_prepare_keeps_regular_files_and_a_symlinked_working_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hosts").write_text("127.0.0.1 custom\n")
    (root / "opt/app").mkdir(parents=True)
    os.symlink("/opt/app", root / "app")  # a WorkingDir that is a link: bwrap only chdirs there
    prepare_rootfs(root, "/app")
    assert (root / "etc/hosts").read_text() == "127.0.0.1 custom\n"
    assert os.readlink(root / "app") == "/opt/app"


def test_stores_prepared_by_an_older_unpacker_are_unpacked_again(tmp_path: Path) -> None:
    from lightabaco.images.unpack import UNPACKER_VERSION

    store = ImageStore(tmp_path / "store")
    (img,) = store.import_path(_layout(tmp_path, [[symlink("_abaco_results.sock", "/oldroot/tmp/x")]]), tag="t")
    assert UNPACKER_VERSION >= 2
    # pretend the tree was made by version 1: rename it, break its mount point as the old code left it
    old = img.rootfs.parent.with_name(img.rootfs.parent.name.rsplit(".v", 1)[0] + ".v1")
    os.rename(img.rootfs.parent, old)
    os.unlink(old / "rootfs/_abaco_results.sock")
    os.symlink("/oldroot/tmp/x", old / "rootfs/_abaco_results.sock")
    again = ImageStore(tmp_path / "store").get("t")
    assert stat.S_ISREG(os.lstat(again.rootfs / "_abaco_results.sock").st_mode)
    assert not old.exists()  # the stale tree is freed once its successor is in place


# ---------------------------------------------------------------------------------------------------
# The fd-relative walker itself


def test_open_beneath_refuses_every_symlink(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a/b").mkdir(parents=True)
    os.symlink("a", root / "l")
    os.symlink("/", root / "abs")
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_beneath(rfd, ["a", "b"])
        os.close(fd)
        for parts in (["l"], ["l", "b"], ["abs", "etc"], ["a", ".."], ["..", "x"]):
            with pytest.raises(UnsafePath):
                open_beneath(rfd, parts)
    finally:
        os.close(rfd)


def test_walk_tree_never_enters_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a/f").write_text("x")
    os.symlink(str(tmp_path), root / "a/out")
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = sorted(name for _fd, name, _st in walk_tree(rfd))
    finally:
        os.close(rfd)
    assert names == ["a", "f", "out"]


# ---------------------------------------------------------------------------------------------------
# Item 7(b): per-image and per-home expansion quotas


def _store_is_clean(store_root: Path) -> None:
    assert [n for n in os.listdir(store_root / "rootfs")] == []
    assert [n for n in os.listdir(store_root / "tmp") if not n.startswith("refs-")] == []


def test_gzip_bomb_stops_at_the_byte_limit_before_writing_it(tmp_path: Path) -> None:
    big = b"\0" * (20 << 20)  # 20 MiB of zeros: about 20 KiB of gzip
    read: list[int] = []
    raw = tar_bytes([file("first", b"1"), file("bomb", big), file("after", b"2")])
    import gzip

    blob = gzip.compress(raw)
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(ImageError, match=r"LIGHTABACO_IMAGE_MAX_BYTES") as e:
        Unpacker(root, UnpackLimits(max_bytes=1 << 20)).apply(
            [LayerSource(open=lambda: _Counting(blob, read), digest=None, diff_id=None)])
    assert "bomb" in str(e.value)
    assert not (root / "bomb").exists()  # refused from the header: not written first
    assert sum(read) < len(blob)  # stopped before the end of the stream


class _Counting(io.BytesIO):
    def __init__(self, data: bytes, read: list[int]) -> None:
        super().__init__(data)
        self._read = read

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        data = super().read(n)
        self._read.append(len(data))
        return data


def test_inode_limit_counts_implicit_parents(tmp_path: Path) -> None:
    deep = "/".join(f"d{i}" for i in range(60)) + "/f"
    with pytest.raises(ImageError, match=r"LIGHTABACO_IMAGE_MAX_INODES"):
        import_layers(tmp_path, [[file(deep)]], limits=UnpackLimits(max_inodes=50))
    _store_is_clean(tmp_path / "store")


def test_inode_limit_counts_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"more than 30 files.*LIGHTABACO_IMAGE_MAX_INODES"):
        import_layers(tmp_path, [[file(f"f{i}") for i in range(40)]], limits=UnpackLimits(max_inodes=30))
    _store_is_clean(tmp_path / "store")


def test_home_quota_on_bytes_refuses_with_a_clear_message(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store", quota=StoreQuota(max_bytes=150_000, max_inodes=10_000))
    w1 = tmp_path / "one"
    w1.mkdir()
    store.import_path(_layout(w1, [[file("a", b"a" * 100_000)]]), tag="one")
    w2 = tmp_path / "two"
    w2.mkdir()
    with pytest.raises(ImageError) as e:
        store.import_path(_layout(w2, [[file("b", b"b" * 100_000)]]), tag="two")
    msg = str(e.value)
    assert "LIGHTABACO_IMAGES_MAX_BYTES" in msg and "lightabaco images rm" in msg
    assert len(os.listdir(tmp_path / "store/rootfs")) == 1  # no partial second tree
    # once full, the next unpack is refused before it starts
    w3 = tmp_path / "three"
    w3.mkdir()
    store.import_path(_layout(w3, [[file("c", b"c" * 50_000)]]), tag="three")
    w4 = tmp_path / "four"
    w4.mkdir()
    with pytest.raises(ImageError, match="LIGHTABACO_IMAGES_MAX_BYTES"):
        store.import_path(_layout(w4, [[file("d", b"")]]), tag="four")
    store.remove("one")
    store.import_path(_layout(w4, [[file("d", b"")]]), tag="four")


def test_home_quota_on_inodes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store", quota=StoreQuota(max_bytes=1 << 30, max_inodes=40))
    with pytest.raises(ImageError, match="LIGHTABACO_IMAGES_MAX_INODES"):
        store.import_path(_layout(tmp_path, [[file(f"f{i}") for i in range(60)]]), tag="t")
    _store_is_clean(tmp_path / "store")


# ---------------------------------------------------------------------------------------------------
# Fuzzing: random layers, nothing outside the root changes, only ImageError escapes, it ends


def _fuzz_strategies():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    comp = st.sampled_from(["a", "b", "d", "..", ".", "", "x" * 120, ".wh.a", ".wh.b", ".wh..wh..opq",
                            ".wh..wh.plnk", "sentinel", "precious", "sub", "_abaco_results.sock", "proc",
                            "etc", "hosts"])
    name = st.lists(comp, min_size=1, max_size=6).map("/".join) | st.sampled_from(["/", "./", "//a", "/a/b"])
    link_target = name | st.sampled_from(["/", "..", "../" * 12, "@S", "@S/precious", "@S/sub", "/oldroot/tmp"])
    kind = st.sampled_from(["file", "dir", "sym", "hard", "fifo", "chr"])
    member = st.tuples(kind, name, link_target, st.integers(0, 0o7777), st.integers(0, 3000),
                       st.integers(-(1 << 33), 1 << 35))
    layer = st.lists(member, max_size=12)
    return st.tuples(st.lists(layer, min_size=1, max_size=3), st.sampled_from(["none", "gzip", "zstd"]))


def _fuzz_tar(members, sentinel: Path) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, target, mode, size, mtime in members:
            target = target.replace("@S", str(sentinel))
            t = tarfile.TarInfo(name)
            t.mode, t.mtime = mode, mtime
            t.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                      "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
            if kind in ("sym", "hard"):
                t.linkname = target
            data = None
            if kind == "file":
                t.size = size
                data = io.BytesIO(bytes([size % 251]) * size)
            tf.addfile(t, data)
    return buf.getvalue()


def _compress(raw: bytes, how: str) -> bytes:
    import gzip

    import zstandard

    if how == "gzip":
        return gzip.compress(raw, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(raw)
    return raw


# 30 to 90 s on a 2-core box (2000 took 50 s idle, 1000 took 74 s under load); LIGHTABACO_FUZZ_EXAMPLES
# overrides it for longer runs.
FUZZ_EXAMPLES = int(os.environ.get("LIGHTABACO_FUZZ_EXAMPLES", "1200"))


def test_fuzz_layers_never_touch_the_outside(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings

    base = tmp_path_factory.mktemp("fuzz")
    sentinel = make_sentinel(base)
    before = snapshot(sentinel)
    counter = iter(range(1 << 30))
    tried: list[int] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=5000, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_fuzz_strategies())
    def run(case) -> None:  # type: ignore[no-untyped-def]
        layers, how = case
        tried.append(1)
        root = base / f"r{next(counter)}"
        root.mkdir()
        sources = [LayerSource(open=lambda blob=_compress(_fuzz_tar(m, sentinel), how): io.BytesIO(blob),
                               digest=None, diff_id=None) for m in layers]
        try:
            Unpacker(root, UnpackLimits(max_bytes=64 << 10, max_inodes=400, max_depth=32)).apply(sources)
            prepare_rootfs(root, "/a/b")
            tree_size(root)
        except ImageError:
            pass
        finally:
            from lightabaco.sandbox.fsutil import force_rmtree

            force_rmtree(root)
        assert snapshot(sentinel) == before
        assert sorted(os.listdir(base)) == ["sentinel"]

    run()
    print(f"\nfuzz: {len(tried)} layer sets tried")
    assert len(tried) >= min(FUZZ_EXAMPLES, 50)
