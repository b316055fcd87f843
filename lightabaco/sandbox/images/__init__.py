"""The image store: import (OCI layout, oci-archive, docker-archive), registry pull, safe unpack.

    from lightabaco.sandbox.images import ImageStore, parse_reference
    store = ImageStore(home / "images")
    image = store.ensure("abacosamples/wc")     # local lookup, else pull
    image.rootfs                                 # flattened tree to bind read-only as /
"""

from .reference import Reference, normalize, parse_reference
from .store import ImageStore
from .unpack import UNPACKER_VERSION, UnpackLimits

__all__ = ["ImageStore", "Reference", "parse_reference", "normalize", "UnpackLimits", "UNPACKER_VERSION"]
