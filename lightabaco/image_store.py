"""The image store as the instance settings configure it (limits and quotas from LIGHTABACO_* settings).

Lives outside `lightabaco/sandbox/` because the sandbox library never imports the settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Settings
    from .sandbox.images import ImageStore


def open_image_store(settings: "Settings", **kwargs: Any) -> "ImageStore":
    """The image store under the settings' home, with the per-image limits and per-home quota applied."""
    from .sandbox.images import ImageStore, StoreQuota, UnpackLimits

    limits = UnpackLimits(max_bytes=settings.image_max_bytes, max_inodes=settings.image_max_inodes)
    quota = StoreQuota(max_bytes=settings.images_max_bytes, max_inodes=settings.images_max_inodes)
    return ImageStore(settings.images_dir, limits=limits, quota=quota, **kwargs)
