"""The image store: import (OCI layout, oci-archive, docker-archive), registry pull, safe unpack.

    from lightabaco.images import ImageStore, parse_reference
    store = ImageStore(home / "images")
    image = store.ensure("abacosamples/wc")     # local lookup, else pull from the registry
    image.rootfs                                 # flattened tree to bind read-only as /
    image.config.entrypoint, image.config.cmd    # ImageConfig (lightabaco.sandbox.types)

Long operations take `progress(event, done, total, detail)`; events are "pull" (bytes downloaded),
"unpack" (compressed bytes read) and "import" (images done); `total` may be None.

Modules: `reference` (Docker reference parsing), `oci` (reading layouts and archives, platforms,
image configs), `unpack` (the safe unpacker), `registry` (distribution API v2 client), `store`;
`credential` (the worker credential of the store's `/v2/` endpoint), `distribution` (pull from a
lightabaco API server's `/v2/`), `remote` (a worker host's fetch of an image it lacks).

May import: the standard library, zstandard and lightabaco.sandbox (types, errors, fsutil, safepath) only:
like the sandbox, a library usable on its own.
"""

from .reference import Reference, normalize, parse_reference
from .store import ImageStore, StoreQuota, open_image_store
from .unpack import UNPACKER_VERSION, UnpackLimits, UnpackQuotaError

__all__ = ["ImageStore", "StoreQuota", "Reference", "parse_reference", "normalize", "UnpackLimits",
           "UnpackQuotaError", "UNPACKER_VERSION", "open_image_store"]
