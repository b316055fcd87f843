"""One chroot-style path walker for everything that writes into an image tree (the builder today; the
unpacker is meant to use it too).

`resolve(root, path)` turns a path inside the image into a host path under `root`, following symlinks as
if `root` were `/`: an absolute target restarts at `root`, `..` stops at `root`, at most `max_links`
links. Whatever the tree contains, the answer is `root` joined with real names, never a path through a
symlink, so nothing a hostile image or build step puts in the tree can point the caller outside it.

What happens at a component that does not exist is the caller's policy:
  MISSING_OK  keep walking by name (the builder's lookups: the caller creates or reads it afterwards);
  CREATE      make it a directory (mode 0700; `created(path)` is told, so the caller can fix the mode later);
  ERROR       raise `error` (the caller expected the directory).
`prepare(rel)` runs before each component is looked at, with its path relative to root ("usr/bin"): the
builder's skeleton uses it to lay out the base image's node at that place on demand.

Standard library only (part of the sandbox library).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Sequence

MISSING_OK = "missing-ok"
CREATE = "create"
ERROR = "error"
MAX_LINKS = 40


class PathWalkError(Exception):
    """The path cannot be resolved inside the root (a loop of links, a missing or non-directory part)."""


def resolve(root: Path | str, path: str | Sequence[str], *, missing: str = MISSING_OK, follow_last: bool = True,
            prepare: Callable[[str], None] | None = None, created: Callable[[str], None] | None = None,
            max_links: int = MAX_LINKS, error: type[Exception] = PathWalkError) -> Path:
    """Host path of `path` (a str like "/usr/bin/tool", or its components) inside `root`, symlinks
    followed with chroot semantics; `follow_last=False` leaves a final symlink itself (lstat semantics).

    With CREATE or ERROR every component walked through must be a directory (or a link to one): the
    result is then a path of real directories, safe to use with O_NOFOLLOW. Raises `error`.
    """
    if missing not in (MISSING_OK, CREATE, ERROR):
        raise ValueError(f"missing={missing!r}: use pathwalk.MISSING_OK, CREATE or ERROR")
    root_s = os.fspath(root)
    shown = path if isinstance(path, str) else "/" + "/".join(path)
    todo = list(reversed(path.split("/") if isinstance(path, str) else list(path)))
    resolved: list[str] = []
    links = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        rel = "/".join(resolved + [comp])
        if prepare is not None:
            prepare(rel)
        cur = os.path.join(root_s, rel)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if missing == ERROR:
                raise error(f"path /{rel} does not exist in the image") from None
            if missing == CREATE:
                os.mkdir(cur, 0o700)
                if created is not None:
                    created(cur)
            resolved.append(comp)
            continue
        last = not any(c not in ("", ".") for c in todo)
        if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
            links += 1
            if links > max_links:
                raise error(f"too many symlinks resolving {shown} in the image")
            target = os.readlink(cur)
            if target.startswith("/"):
                resolved = []
            todo.extend(reversed(target.split("/")))
            continue
        if missing != MISSING_OK and not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            raise error(f"/{rel} is not a directory in the image (resolving {shown})")
        resolved.append(comp)
    return Path(root_s, *resolved)
