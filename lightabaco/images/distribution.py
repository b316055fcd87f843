"""Pull an image from a lightabaco API server's own image store (the read-only distribution endpoint
`/v2/...` of lightabaco/http/registry_api.py), as a worker host does: no external registry involved.

    pull_from_api(store, "http://api.lab:8000", credential, "abacosamples/wc:latest",
                  image_id="sha256:<the actor's image_digest>")

The credential is the instance's worker credential (the `worker-token` file of the API server's home,
copied to each worker host). It goes out as HTTP basic auth after the server's 401 challenge, only to the
API's own host (the registry client never forwards it across a redirect). Every manifest and blob is
verified against its digest by the client, so a host in between cannot change what runs.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from lightabaco.sandbox.errors import ImageError
from lightabaco.sandbox.netpolicy import AddressPolicy
from lightabaco.sandbox.types import PreparedImage
from .reference import Reference, is_image_id, parse_reference
from .registry import PullOptions, RegistryClient, _OPTIONS

WORKER_USER = "lightabaco-worker"  # the basic-auth user name; only the password (the credential) counts
BY_DIGEST = "lightabaco/by-digest"  # repository name used when only a manifest digest is given


def api_registry(api_url: str) -> tuple[str, str]:
    """(scheme, host[:port]) of the API server's distribution endpoint, from its URL."""
    split = urllib.parse.urlsplit(api_url.strip())
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ImageError(f"the API URL {api_url!r} is not an http(s) URL; give it as http://HOST:PORT")
    if split.path not in ("", "/") or split.query:
        raise ImageError(f"the API URL {api_url!r} has a path; the image endpoint lives at the server's root "
                         "(/v2/): give the URL without a path")
    return split.scheme, split.netloc


def pull_from_api(store: Any, api_url: str, credential: str, reference_or_digest: str, *,
                  image_id: str | None = None, progress: Any = None) -> PreparedImage:
    """Pull an image from the API server at `api_url` into `store` (an ImageStore) and return it ready to run.

    `reference_or_digest`: the name the API server knows the image by (an actor's `image`, e.g.
    `abacosamples/wc:latest` or `name@sha256:<manifest digest>`), stored locally under that same name so
    `store.get(name)` finds it; or a bare manifest digest `sha256:...`. `image_id`: the image ID (config
    digest) expected - the actor's `image_digest` - so a tag that moved on the server is noticed
    (ImageError, pull again after the actor's next revision). Raises RegistryAuthError for a wrong
    credential, RegistryError/ImageNotFound-like RegistryError for a missing image."""
    if not credential:
        raise ImageError("no worker credential: copy the API server's <home>/worker-token to this host and "
                         "point LIGHTABACO_WORKER_TOKEN_FILE at it")
    scheme, netloc = api_registry(api_url)
    text = reference_or_digest.strip()
    if text.startswith("sha256:") and is_image_id(text):
        remote = Reference(netloc, BY_DIGEST, None, text)
        local: str | None = None
    else:
        r = parse_reference(text)
        remote = Reference(netloc, r.name, None if r.digest else r.tag, r.digest)
        local = str(r)
    host = urllib.parse.urlsplit(api_url).hostname or ""
    hostkey = f"[{host}]" if ":" in host else host
    # The operator named this host: it may be private (a cluster network) - only it, not its neighbours.
    policy = AddressPolicy(allowed_hosts=frozenset({hostkey, netloc}),
                           setting_hint="the --api URL given to the worker host")
    options = PullOptions(policy=policy, limits=_OPTIONS.get().limits)
    client = RegistryClient(remote, username=WORKER_USER, password=credential, scheme=scheme,
                            options=options)
    img = store.pull(str(remote), client=client, save_as=local, progress=progress)
    if image_id and img.config_digest != image_id:
        raise ImageError(f"the API server's {reference_or_digest} is now image {img.config_digest[:19]}, not "
                         f"{image_id[:19]} as expected; the actor gets a new revision - try again then")
    return img
