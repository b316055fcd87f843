"""Docker-style image references: parse and normalise them the way `docker pull` does.

`abacosamples/wc` -> `docker.io/abacosamples/wc:latest`; `python` -> `docker.io/library/python:latest`;
`localhost:5000/x/y@sha256:...` keeps its registry and digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lightabaco.sandbox.errors import ImageError

DOCKER_HUB = "docker.io"
# Docker Hub's registry API lives on a different host than its public name.
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                   r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. `tag` is None only for digest-only references."""

    registry: str
    repository: str
    tag: str | None = "latest"
    digest: str | None = None

    @property
    def name(self) -> str:
        """registry/repository, e.g. `docker.io/library/python`."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host[:port] that serves the distribution API for this registry."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.startswith("[") else self.registry
        return host in ("localhost", "127.0.0.1", "[::1]") or host.startswith("127.")

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, None, digest)

    def with_tag(self, tag: str) -> "Reference":
        return Reference(self.registry, self.repository, tag, None)

    @property
    def api_reference(self) -> str:
        """What goes after /manifests/ in the registry API: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += ":" + self.tag
        if self.digest:
            s += "@" + self.digest
        return s


def parse_reference(ref: str, default_tag: str = "latest") -> Reference:
    """Parse a Docker reference into its normalised form; raises ImageError with the reason."""
    original = ref
    ref = ref.strip()
    if not ref:
        raise ImageError("empty image reference: give a name like `busybox` or `docker.io/library/busybox:1.36`")
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        if not _DIGEST.match(digest):
            raise ImageError(f"bad digest in image reference {original!r}: expected `@sha256:` and 64 lowercase "
                             "hex digits")
    tag = None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
        if not _TAG.match(tag):
            raise ImageError(f"bad tag {tag!r} in image reference {original!r}: tags are up to 128 of "
                             "[A-Za-z0-9_.-] and cannot start with '.' or '-'")
    parts = ref.split("/")
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, parts[1:]
        if not _HOST.match(registry):
            raise ImageError(f"bad registry host {registry!r} in image reference {original!r}")
    else:
        registry, path = DOCKER_HUB, parts
    if registry.lower() in _HUB_ALIASES:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    for comp in path:
        if not _COMPONENT.match(comp):
            hint = " (repository names must be lowercase)" if comp.lower() != comp else ""
            raise ImageError(f"bad repository name component {comp!r} in image reference {original!r}{hint}: "
                             "use lowercase letters, digits and single separators . _ __ -")
    repository = "/".join(path)
    if len(repository) > 255:
        raise ImageError(f"repository name in {original!r} is longer than 255 characters")
    if tag is None and digest is None:
        tag = default_tag
    return Reference(registry, repository, tag, digest)


def normalize(ref: str) -> str:
    """The canonical string form of `ref` (`python` -> `docker.io/library/python:latest`)."""
    return str(parse_reference(ref))


def is_image_id(s: str) -> bool:
    """True for `sha256:<64 hex>` (an image ID) or a bare hex prefix of 12+ characters."""
    s = s.strip()
    if s.startswith("sha256:"):
        s = s[7:]
    return bool(re.fullmatch(r"[a-f0-9]{12,64}", s))
