"""ADD of a local archive on any Python 3.11 (Debian 12 has 3.11.2, without tarfile's extraction filters):
hostile archives cannot write outside the image tree, whatever their names, symlinks or hard links say."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from lightabaco.build.tree import extract_archive
from lightabaco.build.containerfile import BuildError


def _archive(path: Path, members: list[tuple[str, str, str]], mode: str = "w:gz") -> Path:
    """members: (kind, name, data-or-link) with kind file | dir | sym | hard."""
    with tarfile.open(path, mode) as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size, info.mode = len(value), 0o644
                tar.addfile(info, io.BytesIO(value.encode()))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[kind]
            info.mode = 0o755
            info.linkname = value
            tar.addfile(info)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    return root


def test_extracts_without_python_3_11_4_filters(tmp_path: Path, tree: Path, monkeypatch):
    monkeypatch.delattr(tarfile, "tar_filter", raising=False)  # what Debian 12's 3.11.2 looks like
    archive = _archive(tmp_path / "a.tar.gz", [("dir", "pkg", ""), ("file", "pkg/mod.py", "x = 1\n"),
                                               ("sym", "pkg/alias.py", "mod.py"), ("hard", "pkg/copy.py", "pkg/mod.py")])
    owners: dict = {}
    extract_archive(archive, tree, "/opt/", owners)
    assert (tree / "opt/pkg/mod.py").read_text() == "x = 1\n"
    assert os.readlink(tree / "opt/pkg/alias.py") == "mod.py"
    assert (tree / "opt/pkg/copy.py").stat().st_ino == (tree / "opt/pkg/mod.py").stat().st_ino


def test_dot_dot_names_are_refused(tmp_path: Path, tree: Path):
    archive = _archive(tmp_path / "a.tar", [("file", "../../escaped", "x")], mode="w")
    with pytest.raises(BuildError, match="outside"):
        extract_archive(archive, tree, "/opt", {})
    assert not (tmp_path / "escaped").exists() and not (tree / "escaped").exists()


def test_symlink_then_file_through_it_stays_in_the_tree(tmp_path: Path, tree: Path):
    outside = tmp_path / "host-dir"
    outside.mkdir()
    archive = _archive(tmp_path / "a.tar", [("sym", "link", str(outside)), ("file", "link/pwned", "owned"),
                                            ("sym", "up", "../../../../../../.."), ("file", "up/pwned2", "owned")],
                       mode="w")
    extract_archive(archive, tree, "/", {})
    assert not (outside / "pwned").exists() and not (tmp_path / "pwned2").exists()
    # Resolved chroot-style: the absolute link points at the same path inside the image.
    assert (tree / str(outside).lstrip("/") / "pwned").read_text() == "owned"
    assert (tree / "pwned2").read_text() == "owned"


def test_symlink_in_the_base_is_resolved_inside_the_tree(tmp_path: Path, tree: Path):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(str(victim), tree / "etc" / "conf")  # an image's own absolute symlink
    archive = _archive(tmp_path / "a.tar", [("file", "conf/x", "data")], mode="w")
    extract_archive(archive, tree, "/etc", {})
    assert not (victim / "x").exists()
    assert (tree / str(victim).lstrip("/") / "x").read_text() == "data"


def test_existing_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path, tree: Path):
    host_file = tmp_path / "host-file"
    host_file.write_text("keep")
    os.symlink(str(host_file), tree / "etc" / "motd")
    archive = _archive(tmp_path / "a.tar", [("file", "motd", "new")], mode="w")
    extract_archive(archive, tree, "/etc", {})
    assert host_file.read_text() == "keep"
    assert not (tree / "etc/motd").is_symlink() and (tree / "etc/motd").read_text() == "new"


def test_hard_link_to_a_host_file_is_refused(tmp_path: Path, tree: Path):
    archive = _archive(tmp_path / "a.tar", [("hard", "shadow", "/etc/shadow")], mode="w")
    with pytest.raises(BuildError, match="not a regular file"):
        extract_archive(archive, tree, "/", {})
    assert not (tree / "shadow").exists()
