"""How a worker host gets an image it lacks: from the API server's own image store (`/v2/`), with the
worker credential. `lightabaco.workers.imagesource` calls `fetch` in the pool process (or supervisor)
that needs the image; the image lands in this host's store under the actor's image name, so the next
`services.images.get(ref)` finds it without the network.

The credential is read from `worker_token_file` (LIGHTABACO_WORKER_TOKEN_FILE), else `<home>/worker-token`
of this host's home: the operator copies the API server's file there. It is read on every fetch (a fetch
is rare: once per image per host), so a credential copied after the host started is picked up.
"""

from __future__ import annotations

import logging
from typing import Any

from lightabaco.sandbox.errors import ImageError
from lightabaco.sandbox.types import PreparedImage
from . import credential
from .distribution import pull_from_api

log = logging.getLogger(__name__)


def fetch(services: Any, ref: str, api_url: str, image_id: str | None = None) -> PreparedImage:
    """Pull `ref` from the API server at `api_url` into `services.images`; `image_id` (the actor's
    `image_digest`, when known) makes a tag that moved on the server an ImageError instead of a silent
    change of what runs."""
    try:
        secret = credential.load(services.settings)
    except FileNotFoundError:
        raise ImageError(f"no worker credential at {credential.path_of(services.settings)}: copy the API "
                         "server's <home>/worker-token there (or set LIGHTABACO_WORKER_TOKEN_FILE to the copy) "
                         "so this host can fetch images from the API") from None
    except ValueError as exc:
        raise ImageError(str(exc)) from None
    image = pull_from_api(services.images, api_url, secret, ref, image_id=image_id)
    log.info("pulled %s from the API server %s (image %s)", ref, api_url, image.config_digest[:19])
    return image
