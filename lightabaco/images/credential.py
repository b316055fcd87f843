"""The worker credential: one secret per instance that lets worker hosts read the API server's image store
over `/v2/...` (lightabaco/http/registry_api.py serves it, `distribution.pull_from_api` presents it).

It belongs to the image store's endpoint, so it lives here, beside the client that uses it: the API server
(`ensure`), worker hosts (`load`, in every pool process that fetches an image) and the Slurm pilots all read
it without going through the rule layers. Standard library only; settings are read by duck type
(`home`, `worker_token_file`).

It is not a user token: user tokens never read the store (images may hold other users' secrets, e.g.
configs baked into a build), and this credential opens nothing else. It lives in a file, mode 0600,
created by the API server when missing (`worker_token_file`, default `<home>/worker-token`); the operator
copies it to each worker host. Rotating: stop the server, delete the file, start it, copy it again.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any


def path_of(settings: Any) -> Path:
    """`worker_token_file` (LIGHTABACO_WORKER_TOKEN_FILE), else `<home>/worker-token`."""
    configured = str(getattr(settings, "worker_token_file", "") or "").strip()
    return Path(configured).expanduser() if configured else Path(settings.home) / "worker-token"


def ensure(settings: Any) -> str:
    """The credential, creating the file (0600, never replacing one) when it is missing."""
    path = path_of(settings)
    try:
        return load(settings)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return load(settings)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def load(settings: Any) -> str:
    """The credential from the file; FileNotFoundError when it is missing, ValueError when it is empty."""
    fd = os.open(path_of(settings), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd) as f:
        token = f.read(4096).strip()
    if len(token) < 16:
        raise ValueError(f"the worker credential in {path_of(settings)} is empty or too short; delete the "
                         "file and restart the API server to make a new one")
    return token


def matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison (no timing oracle on the credential)."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
