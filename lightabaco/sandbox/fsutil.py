"""Filesystem helpers shared by the image store, the per-execution scratch and the image builder."""

from __future__ import annotations

import os
from pathlib import Path

from .safepath import remove_at


def force_rmtree(path: Path | str, *, ignore_errors: bool = False) -> None:
    """Remove a tree even when it holds dirs without u+rwx (chmod them first); never follows symlinks.

    Works on directory fds below the parent of `path` (safepath.remove_at), so a link inside the tree,
    even one swapped in while we remove it, is unlinked and never followed. A missing path is not an
    error. With ignore_errors (cleanup in a `finally`, where raising would hide the real error),
    whatever cannot be removed is left behind silently."""
    if ignore_errors:
        try:
            force_rmtree(path)
        except OSError:
            pass
        return
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    if not name:
        raise OSError(f"refusing to remove the root directory {path!r}")
    try:
        # the caller's path is trusted (it may pass through links of its own); what is below is not
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        remove_at(parent_fd, name)
    finally:
        os.close(parent_fd)
