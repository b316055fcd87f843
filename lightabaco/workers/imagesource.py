"""Where a worker host gets an image it lacks (issue 12).

A pool process that claims a message for an image not in its host's store calls `fetch_missing`. On one
machine (no `images_source`) nothing is fetched here: the supervisor pulls in its own processes. On a
worker host started with `lightabaco workers --api URL`, `images_source` is that URL and the hook below
is where the image comes from the API server's store (its read-only `/v2/` registry):
`lightabaco.images.remote.fetch`, with the worker credential. A host that cannot fetch (no credential,
API unreachable) runs only what its own store (pre-populated, or shared) holds; messages for other
images are given back and run on another host.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

# fetcher(services, image reference, api base URL, image_id=expected image ID or None) -> PreparedImage,
# or None when it cannot.
Fetcher = Callable[..., Any]
_fetcher: Fetcher | None = None


def install(fetcher: Fetcher | None) -> None:
    """Set the function that brings a missing image to this host (None: none)."""
    global _fetcher
    _fetcher = fetcher


DEFAULT_MODULE = "lightabaco.images.remote"  # provides fetch(services, ref, api_url), when it exists


def _default() -> Fetcher | None:
    """Pool processes are separate processes: without an install() in them, the fetcher is
    `fetch` of DEFAULT_MODULE, if that module exists."""
    import importlib

    try:
        module = importlib.import_module(DEFAULT_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != DEFAULT_MODULE:
            raise
        return None
    return getattr(module, "fetch", None)


def fetch_missing(services: Any, ref: str, image_id: str | None = None) -> Any:
    """The prepared image `ref`, fetched from `images_source`; None when it cannot be had here.
    `image_id`: the image the actor's revision runs (its `image_digest`), when known."""
    source = services.settings.images_source
    fetcher = _fetcher or _default()
    if not source or fetcher is None:
        return None
    try:
        return fetcher(services, ref, source, image_id=image_id)
    except Exception as exc:  # another host may have it: the message is given back, not failed
        log.warning("could not fetch image %s from %s: %s", ref, source, exc)
        return None
