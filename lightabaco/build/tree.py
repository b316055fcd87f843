"""The build's working tree: chroot-style path resolution, account lookups, laying out base layers.

Helpers of builder.py (standard library and the sandbox library only). Paths inside the tree are
resolved by lightabaco.sandbox.pathwalk, the one chroot-style walker.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

from lightabaco.sandbox import pathwalk

from .containerfile import BuildError
from .oci_write import read_layout


def resolve_in_root(root: Path, path: str, follow_last: bool = True) -> Path:
    """Where `path` (absolute inside the image) lands on the host, resolving symlinks as a chroot would,
    so that an image's `bin -> usr/bin` is followed but nothing can point outside the tree."""
    return pathwalk.resolve(root, path, follow_last=follow_last, error=BuildError)


def lookup_ids(root: Path, spec: str) -> tuple[int, int]:
    """uid, gid for `user[:group]` using the image's own /etc/passwd and /etc/group."""
    user, _, group = spec.partition(":")

    def table(name: str) -> dict[str, list[str]]:
        path = resolve_in_root(root, f"/etc/{name}")
        rows = path.read_text().splitlines() if path.is_file() else []
        return {r.split(":")[0]: r.split(":") for r in rows if r.count(":") >= 2}

    if user.isdigit():
        uid, gid = int(user), int(user)
    elif user in (passwd := table("passwd")):
        uid, gid = int(passwd[user][2]), int(passwd[user][3])
    else:
        raise BuildError(f"user {user!r} is not in the image's /etc/passwd: use a numeric uid or add the user")
    if group:
        if group.isdigit():
            gid = int(group)
        elif group in (groups := table("group")):
            gid = int(groups[group][2])
        else:
            raise BuildError(f"group {group!r} is not in the image's /etc/group: use a numeric gid")
    return uid, gid


class Skeleton:
    """The base's directories, symlinks and account files, created in the build tree only when a path
    is used (COPY/WORKDIR destinations, --chown lookups).

    Builds without RUN never need the base's file contents; creating the few nodes a COPY touches
    takes milliseconds where laying out a whole Python base takes seconds. Whatever gets created here
    is part of the new layer (parent directories and symlinks identical to the base's: harmless).
    """

    ACCOUNT_FILES = ("etc/passwd", "etc/group")

    def __init__(self, layout: Path):
        cached = layout / "skeleton.json"
        if cached.exists():
            self.index = json.loads(cached.read_text())
            return
        index: dict[str, list] = {}
        _, layers, _ = read_layout(layout)
        for layer in layers:
            with tarfile.open(layer.blob) as tar:
                for member in tar:
                    name = member.name
                    while name.startswith("./"):
                        name = name[2:]
                    name = name.strip("/")
                    if not name or ".." in name.split("/"):
                        continue
                    if member.isdir():
                        index[name] = ["d", member.mode & 0o7777]
                    elif member.issym():
                        index[name] = ["l", member.linkname]
                    elif member.isreg() and name in self.ACCOUNT_FILES:
                        source = tar.extractfile(member)
                        index[name] = ["f", source.read().decode(errors="replace") if source else ""]
                    else:
                        index.pop(name, None)
        self.index = index
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, cached)

    def ensure(self, root: Path, path: str) -> None:
        """Create, inside root, the base's nodes that resolving `path` walks through."""
        pathwalk.resolve(root, path, prepare=lambda rel: self._lay_out(root, rel), error=BuildError)

    def _lay_out(self, root: Path, rel: str) -> None:
        """The base's node at `rel` (its parents are real directories already: the walker resolved them)."""
        disk = root / rel
        entry = self.index.get(rel)
        if not entry or disk.is_symlink() or disk.exists():
            return
        if entry[0] == "l":
            disk.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(entry[1], disk)
        elif entry[0] == "d":
            disk.mkdir(parents=True, exist_ok=True)
            os.chmod(disk, entry[1] | 0o700)
        elif entry[0] == "f":
            disk.parent.mkdir(parents=True, exist_ok=True)
            disk.write_text(entry[1])


def unpack_layers(layout: Path, root: Path) -> None:
    # Only layouts this module wrote (built-in bases, flattened store images): trusted, no whiteouts.
    _, layers, _ = read_layout(layout)
    for layer in layers:
        # -p keeps modes exactly (a sticky, world-writable /tmp stays so) also when not root.
        argv = ["tar", "-xpf", str(layer.blob), "-C", str(root), "--numeric-owner"]
        if os.getuid() != 0:
            argv += ["--no-same-owner"]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"cannot lay out base layer {layer.diff_id[:19]}: {proc.stderr.strip()[:300]}")
