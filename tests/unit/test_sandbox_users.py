"""Resolving the image USER inside a rootfs, safely."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightabaco.sandbox.errors import ExecutionSetupError
from lightabaco.sandbox.types import ExecSpec, ImageConfig, PreparedImage
from lightabaco.sandbox.users import (DEFAULT_UID, Identity, read_image_file, resolve_image_user,
                                      sandbox_identity)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1000::/home/app:/bin/sh\n"
        "svc:x:2000:2001:svc:/srv:/bin/sh\nbroken-line\n")
    (tmp_path / "etc" / "group").write_text("app:x:1000:\nstaff:x:3000:\n")
    return tmp_path


@pytest.mark.parametrize("user, expected", [
    ("", Identity(0, 0, "/root")),
    ("app", Identity(1000, 1000, "/home/app")),
    ("svc", Identity(2000, 2001, "/srv")),
    ("svc:staff", Identity(2000, 3000, "/srv")),
    ("svc:77", Identity(2000, 77, "/srv")),
    ("2000", Identity(2000, 2001, "/srv")),
    ("4242", Identity(4242, 0, "/")),
    ("4242:4243", Identity(4242, 4243, "/")),
])
def test_image_user_forms(rootfs, user, expected):
    assert resolve_image_user(rootfs, user) == expected


def test_unknown_names_fail_with_a_fix(rootfs):
    with pytest.raises(ExecutionSetupError, match="not in the image's /etc/passwd"):
        resolve_image_user(rootfs, "nobody-here")
    with pytest.raises(ExecutionSetupError, match="not in the image's /etc/group"):
        resolve_image_user(rootfs, "app:nogroup")


def test_symlinked_passwd_is_not_followed_out_of_the_rootfs(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/passwd")  # host file: must not be read
    assert read_image_file(tmp_path, "etc/passwd") is None
    with pytest.raises(ExecutionSetupError):
        resolve_image_user(tmp_path, "root")  # host's root entry is invisible


def test_symlinked_directory_is_not_followed(tmp_path):
    (tmp_path / "etc").symlink_to("/etc")
    assert read_image_file(tmp_path, "etc/passwd") is None
    assert read_image_file(tmp_path, "../etc/passwd") is None


def test_spec_precedence(rootfs):
    image = PreparedImage("sha256:0", rootfs, ImageConfig(user="svc"))
    assert sandbox_identity(ExecSpec(image=image)).uid == DEFAULT_UID
    assert sandbox_identity(ExecSpec(image=image, use_image_user=True)).uid == 2000
    explicit = ExecSpec(image=image, use_image_user=True, uid_gid=(5, 6))
    assert (sandbox_identity(explicit).uid, sandbox_identity(explicit).gid) == (5, 6)
