"""What a build returns and what it needs from the image store: shared by the bwrap builder (builder.py)
and the podman engine (podman.py), so neither imports the other's module for its types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from lightabaco.sandbox.types import PreparedImage

Progress = Callable[[str, int, "int | None", str], None]


class Store(Protocol):
    """The parts of lightabaco.images.ImageStore the builder uses."""

    def get(self, ref: str) -> PreparedImage: ...
    def ensure(self, ref: str, **kwargs: Any) -> PreparedImage: ...
    def import_path(self, path: Any, tag: str | None = None, progress: Any = None) -> list[PreparedImage]: ...
    def tag(self, ref_or_id: str, new_ref: str) -> Any: ...


@dataclass
class BuildResult:
    image: PreparedImage
    config_digest: str
    cached: bool
    seconds: float
    steps: list[str] = field(default_factory=list)
