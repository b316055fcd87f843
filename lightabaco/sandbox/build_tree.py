"""The build's working tree: chroot-style path resolution, account lookups, laying out base layers.

Helpers of build.py (standard library only, like the rest of the sandbox package).
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

from .containerfile import BuildError
from .oci_write import read_layout


def resolve_in_root(root: Path, path: str, follow_last: bool = True) -> Path:
    """Where `path` (absolute inside the image) lands on the host, resolving symlinks as a chroot would,
    so that an image's `bin -> usr/bin` is followed but nothing can point outside the tree."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink() and (parts or follow_last):
            hops += 1
            if hops > 40:
                raise BuildError(f"too many symlinks resolving {path} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


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
        parts = [p for p in path.split("/") if p not in ("", ".")]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            rel = "/".join(resolved + [part])
            disk = root / rel
            entry = self.index.get(rel)
            if entry and entry[0] == "l":
                if not disk.is_symlink() and not disk.exists():
                    disk.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(entry[1], disk)
                if disk.is_symlink():
                    hops += 1
                    if hops > 40:
                        raise BuildError(f"too many symlinks resolving {path} in the base image")
                    target = os.readlink(disk)
                    if target.startswith("/"):
                        resolved = []
                    parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                    continue
            elif entry and entry[0] == "d" and not disk.exists():
                disk.mkdir(parents=True, exist_ok=True)
                os.chmod(disk, entry[1] | 0o700)
            elif entry and entry[0] == "f" and not disk.exists() and not disk.is_symlink():
                disk.parent.mkdir(parents=True, exist_ok=True)
                disk.write_text(entry[1])
            resolved.append(part)


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
