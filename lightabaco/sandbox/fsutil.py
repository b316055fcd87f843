"""Filesystem helpers shared by the image store, the per-execution scratch and the image builder."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path


def force_rmtree(path: Path | str, *, ignore_errors: bool = False) -> None:
    """Remove a tree even when it holds dirs without u+rwx (chmod them first); never follows symlinks.

    A missing path is not an error. With ignore_errors (cleanup in a `finally`, where raising would
    hide the real error), whatever cannot be removed is left behind silently."""
    if ignore_errors:
        try:
            force_rmtree(path)
        except OSError:
            pass
        return
    path = os.fspath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return

    def onerror(func, p, exc_info):  # type: ignore[no-untyped-def]
        # A dir without u+rwx cannot be listed or emptied: fix its mode and retry once.
        parent = os.path.dirname(p)
        for d in (parent, p):
            try:
                if stat.S_ISDIR(os.lstat(d).st_mode):
                    os.chmod(d, 0o700)
            except OSError:
                pass
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=_raise)
            else:
                func(p)
        except FileNotFoundError:
            pass

    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    shutil.rmtree(path, onerror=onerror)


def _raise(func, p, exc_info):  # type: ignore[no-untyped-def]
    raise exc_info[1]
