"""Docker reference parsing and normalisation."""

from __future__ import annotations

import pytest

from lightabaco.sandbox.errors import ImageError
from lightabaco.images import normalize, parse_reference
from lightabaco.images.reference import is_image_id

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref, expected", [
    ("python", "docker.io/library/python:latest"),
    ("python:3.12-slim", "docker.io/library/python:3.12-slim"),
    ("abacosamples/wc", "docker.io/abacosamples/wc:latest"),
    ("docker.io/abacosamples/wc:1.0", "docker.io/abacosamples/wc:1.0"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("localhost/bb:1", "localhost/bb:1"),
    ("localhost:5000/a/b/c", "localhost:5000/a/b/c:latest"),
    ("127.0.0.1:41234/team/bb:v1.2", "127.0.0.1:41234/team/bb:v1.2"),
    ("registry.example.org/x/y:tag@" + D, "registry.example.org/x/y:tag@" + D),
    ("quay.io/org/img@" + D, "quay.io/org/img@" + D),
    ("a__b/c-d.e", "docker.io/a__b/c-d.e:latest"),
])
def test_normalize(ref: str, expected: str) -> None:
    assert normalize(ref) == expected


def test_parts_and_api_host() -> None:
    r = parse_reference("python@" + D)
    assert (r.registry, r.repository, r.tag, r.digest) == ("docker.io", "library/python", None, D)
    assert r.api_reference == D
    assert r.api_host != "docker.io"  # Docker Hub's API host differs from its name
    r = parse_reference("localhost:5000/x")
    assert r.api_host == "localhost:5000" and r.is_loopback and r.api_reference == "latest"
    assert parse_reference("127.0.0.1:9/x").is_loopback
    assert not parse_reference("quay.io/x").is_loopback


@pytest.mark.parametrize("bad, why", [
    ("", "empty"),
    ("Python", "lowercase"),
    ("x@sha256:123", "bad digest"),
    ("x:-bad", "bad tag"),
    ("a//b", "bad repository"),
    ("x@md5:" + "a" * 32, "bad digest"),
])
def test_bad_references(bad: str, why: str) -> None:
    with pytest.raises(ImageError, match=why):
        parse_reference(bad)


def test_is_image_id() -> None:
    assert is_image_id(D) and is_image_id("abababababab")
    assert not is_image_id("busybox") and not is_image_id("abc")
