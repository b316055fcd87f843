"""The one chroot-style path walker (lightabaco.sandbox.pathwalk): hostile trees cannot point outside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightabaco.sandbox import pathwalk
from lightabaco.sandbox.pathwalk import CREATE, ERROR, PathWalkError, resolve


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


def test_symlinks_are_followed_inside_the_root(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert resolve(root, "/bin/tool") == root / "usr" / "bin" / "tool"
    assert resolve(root, "/up/etc/passwd") == root / "etc" / "passwd"
    assert resolve(root, "/dots/etc/passwd") == root / "etc" / "passwd"
    assert resolve(root, "../../etc") == root / "etc"
    assert resolve(root, "/bin", follow_last=False) == root / "bin"


def test_a_link_loop_is_an_error_not_a_hang(tmp_path: Path) -> None:
    with pytest.raises(PathWalkError, match="too many symlinks"):
        resolve(_tree(tmp_path), "/loop/x")

    class Mine(Exception):
        pass

    with pytest.raises(Mine):
        resolve(_tree(tmp_path / "b"), "/loop", error=Mine)


def test_missing_policies(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert resolve(root, "/new/dir") == root / "new" / "dir"
    assert not (root / "new").exists()
    with pytest.raises(PathWalkError, match="does not exist"):
        resolve(root, ["new", "dir"], missing=ERROR)
    made: list[str] = []
    assert resolve(root, ["up", "new", "dir"], missing=CREATE, created=made.append) == root / "new" / "dir"
    assert (root / "new" / "dir").is_dir() and made == [str(root / "new"), str(root / "new" / "dir")]
    with pytest.raises(PathWalkError, match="not a directory"):
        resolve(root, "/etc/passwd/x", missing=CREATE)
    with pytest.raises(ValueError):
        resolve(root, "/x", missing="maybe")


def test_prepare_sees_each_component_before_it_is_looked_at(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    seen: list[str] = []

    def lay_out(rel: str) -> None:
        seen.append(rel)
        if rel == "bin":
            os.symlink("/usr/bin", root / "bin")
        elif rel == "usr":
            (root / "usr").mkdir()

    assert resolve(root, "/bin/sh", prepare=lay_out) == root / "usr" / "bin" / "sh"
    assert seen == ["bin", "usr", "usr/bin", "usr/bin/sh"]


def test_an_attacker_link_planted_in_the_tree_is_resolved_inside(tmp_path: Path) -> None:
    """A symlink to the host's /etc planted by a build step (not in the base's index) was not followed by
    the old skeleton walker, whose mkdir then went through it: the one walker follows every link inside."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), root / "evil")
    assert resolve(root, "/evil/x") == root / str(outside).lstrip("/") / "x"
    assert pathwalk.MAX_LINKS == 40
