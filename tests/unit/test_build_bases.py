"""The offline bases: where the Debian mirror comes from, which FROM names are built in, busybox checks."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from lightabaco.build import bases
from lightabaco.build.containerfile import BuildError
from lightabaco.build.oci_write import read_layout


def test_mirror_from_deb822_sources(tmp_path: Path):
    sources = tmp_path / "debian.sources"
    sources.write_text("Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
                       "Components: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n"
                       "Suites: bookworm-security\nComponents: main\n")
    assert bases.host_mirror([sources]) == ("http://mirror.invalid/debian", "bookworm")


def test_mirror_from_one_line_sources_skips_security_and_sources(tmp_path: Path):
    sources = tmp_path / "sources.list"
    sources.write_text("# comment\ndeb-src http://m.invalid/ubuntu noble main\n"
                       "deb http://security.invalid/ubuntu noble-security main\n"
                       "deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/ubuntu noble main universe\n")
    assert bases.host_mirror([sources]) == ("http://m.invalid/ubuntu", "noble")
    assert bases.host_archive([sources])[2] == ["main", "universe"]


def test_no_mirror_says_what_to_do(tmp_path: Path):
    with pytest.raises(BuildError, match="FROM an image you pulled"):
        bases.host_mirror([tmp_path / "missing.list"])


@pytest.mark.parametrize("ref,expected", [
    ("lightabaco/busybox", bases.BUSYBOX), ("docker.io/lightabaco/busybox:latest", bases.BUSYBOX),
    ("lightabaco/python", bases.PYTHON), ("localhost/lightabaco/python:3", bases.PYTHON),
    ("python:3.12-slim", None), ("busybox", None),
])
def test_builtin_names(ref, expected):
    assert bases.builtin_name(ref) == expected


def test_static_elf_detection(tmp_path: Path):
    assert not bases._is_static_elf(Path("/bin/ls"))  # dynamically linked on every Debian/Ubuntu
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not bases._is_static_elf(text)


def test_busybox_layout_is_cached_and_complete(tmp_path: Path):
    try:
        bases.find_busybox()
    except BuildError:
        pytest.skip("busybox-static is not installed")
    first = bases.busybox_layout(tmp_path)
    assert bases.busybox_layout(tmp_path) == first  # second call: the cached layout
    doc, layers, digest = read_layout(first)
    assert doc["config"]["Cmd"] == ["sh"] and digest.startswith("sha256:")
    with tarfile.open(layers[0].blob) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["bin/sh"].issym() and names["bin/sh"].linkname == "busybox"
    assert "app:x:1000:1000" in tar_text(layers[0].blob, "etc/passwd")
    assert names["tmp"].mode == 0o1777


def tar_text(blob: Path, name: str) -> str:
    with tarfile.open(blob) as tar:
        member = tar.extractfile(name)
        return member.read().decode() if member else ""
