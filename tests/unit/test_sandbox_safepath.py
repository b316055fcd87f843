"""The one chroot-safe path walker (lightabaco.sandbox.safepath), as the builder uses it: symlinks are
followed inside the root, never by the kernel, and a missing directory is the caller's policy."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lightabaco.sandbox import safepath
from lightabaco.sandbox.safepath import ALLOW, CREATE, ERROR, UnsafePath, locate, open_root, resolve_in_root


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    os.symlink("usr/bin", root / "bin")
    os.symlink("/", root / "up")                 # absolute: restarts at the root, not the host's /
    os.symlink("../../../../..", root / "dots")  # `..` stops at the root
    os.symlink("loop", root / "loop")
    return root


@pytest.fixture
def rfd(tmp_path: Path):
    fd = open_root(_tree(tmp_path))
    yield fd
    os.close(fd)


def _where(root_fd: int, path: str, **kw) -> list[str]:
    with locate(root_fd, path.split("/"), **kw) as entry:
        return entry.parts


def test_symlinks_are_followed_inside_the_root(tmp_path: Path, rfd: int) -> None:
    assert _where(rfd, "/bin/tool", missing=ALLOW) == ["usr", "bin", "tool"]
    assert _where(rfd, "/up/etc/passwd") == ["etc", "passwd"]
    assert _where(rfd, "/dots/etc/passwd") == ["etc", "passwd"]
    assert _where(rfd, "../../etc") == ["etc"]
    assert _where(rfd, "/bin", follow_last=False) == ["bin"]
    assert _where(rfd, "/bin") == ["usr", "bin"]
    assert _where(rfd, "/usr/bin/..") == ["usr"]
    assert _where(rfd, "/") == []
    fd, parts = resolve_in_root(rfd, ["bin"])
    try:
        assert parts == ["usr", "bin"] and os.path.samestat(os.fstat(fd), (tmp_path / "root/usr/bin").stat())
    finally:
        os.close(fd)


def test_the_entry_is_acted_on_through_its_directory_fd(rfd: int) -> None:
    with locate(rfd, ["up", "etc", "passwd"]) as entry:
        assert entry.dir_parts == ["etc"] and entry.name == "passwd"
        assert stat.S_ISREG(entry.lstat().st_mode)
        fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=entry.dir_fd)
        assert os.read(fd, 4) == b"root"
        os.close(fd)
    assert entry.dir_fd == -1  # closed by the context manager


def test_a_link_loop_is_an_error_not_a_hang(rfd: int) -> None:
    with pytest.raises(UnsafePath, match="too many levels") as info:
        locate(rfd, ["loop", "x"])
    assert info.value.reason == "loop"
    with pytest.raises(UnsafePath):
        locate(rfd, ["loop"])
    assert _where(rfd, "/loop", follow_last=False) == ["loop"]


def test_missing_policies(tmp_path: Path, rfd: int) -> None:
    root = tmp_path / "root"
    with locate(rfd, "/new/dir/file".split("/"), missing=ALLOW) as entry:
        assert entry.absent == ["new", "dir"] and entry.name == "file" and entry.lstat() is None
    assert not (root / "new").exists()
    with pytest.raises(UnsafePath, match="does not exist") as info:
        locate(rfd, ["new", "dir", "file"], missing=ERROR)
    assert info.value.reason == "missing" and info.value.where == "/new"
    made: list[tuple[list[str], int]] = []
    fd, parts = resolve_in_root(rfd, ["up", "new", "dir"], missing=CREATE, mode=0o751,
                                created=lambda p, f: made.append((p, stat.S_IMODE(os.fstat(f).st_mode))))
    os.close(fd)
    assert parts == ["new", "dir"] and (root / "new" / "dir").is_dir()
    assert made == [(["new"], 0o751), (["new", "dir"], 0o751)]  # exactly the mode given, whatever the umask
    assert stat.S_IMODE((root / "new").stat().st_mode) == 0o751
    with pytest.raises(UnsafePath, match="not a directory"):
        locate(rfd, ["etc", "passwd", "x"], missing=CREATE)
    with pytest.raises(ValueError):
        locate(rfd, ["x"], missing="maybe")
    with pytest.raises(ValueError, match="locate"):
        resolve_in_root(rfd, ["x"], missing=ALLOW)
    # `..` below a missing directory stays lexical, as the old path walker did.
    assert _where(rfd, "/nope/../etc/passwd", missing=ALLOW) == ["etc", "passwd"]


@pytest.mark.skipif(os.getuid() != 0, reason="choosing the owner of a created directory needs root")
def test_created_directories_get_the_owner_given(tmp_path: Path, rfd: int) -> None:
    fd, _ = resolve_in_root(rfd, ["owned"], missing=CREATE, owner=(1234, 5678), mode=0o755)
    os.close(fd)
    st = (tmp_path / "root" / "owned").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o755)


def test_prepare_sees_each_component_before_it_is_looked_at(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    seen: list[str] = []

    def lay_out(dir_fd: int, dir_parts: list[str], name: str) -> None:
        seen.append("/".join(dir_parts + [name]))
        if dir_parts == [] and name == "bin":
            os.symlink("/usr/bin", "bin", dir_fd=dir_fd)
        elif dir_parts == [] and name == "usr":
            os.mkdir("usr", dir_fd=dir_fd)

    fd = open_root(root)
    try:
        assert _where(fd, "/bin/sh", missing=ALLOW, prepare=lay_out) == ["usr", "bin", "sh"]
    finally:
        os.close(fd)
    # usr/bin is missing: nothing below it is looked at (no node of the base can be there).
    assert seen == ["bin", "usr", "usr/bin"]


def test_an_attacker_link_planted_in_the_tree_is_resolved_inside(tmp_path: Path) -> None:
    """A symlink to a host directory planted by a build step: creating through it makes directories
    inside the tree, never in the host directory."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), root / "evil")
    fd = open_root(root)
    try:
        with locate(fd, ["evil", "x", "y"], missing=CREATE) as entry:
            assert entry.parts == [*str(outside).strip("/").split("/"), "x", "y"]
    finally:
        os.close(fd)
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "x").is_dir()
    assert safepath.MAX_LINKS == 40
