"""The build's working tree: chroot-style path resolution, account lookups, laying out base layers.

Helpers of builder.py (standard library and the sandbox library only). Paths inside the tree are
resolved by lightabaco.sandbox.pathwalk, the one chroot-style walker.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable

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


def extract_archive(archive: Path, root: Path, dest: str, owners: dict[str, tuple[int, int]],
                    chown: tuple[int, int] | None = None, ensure: Callable[[str], None] | None = None) -> None:
    """Extract a tar archive (plain, gzip, xz or bzip2) into the image tree at `dest`, as ADD does.

    Written here rather than with tarfile's extraction filters (Python >= 3.11.4 only; Debian 12 ships
    3.11.2). Nothing can land outside `root`: a member name that climbs above `dest` is refused, and every
    path is resolved chroot-style (resolve_in_root), so a symlink met on the way, from the base image or
    from an earlier member, points inside the image and never at the host. Files are created with
    O_NOFOLLOW|O_EXCL after removing what was there, hard links must name a regular file inside the tree,
    and device nodes and fifos are skipped. Owners come from the archive (or `chown`); an unprivileged
    build cannot chown, so it records them in `owners` for the layer's tar headers. `ensure(path)` lays out
    the base's nodes on the way to a path first (the Skeleton of builds without RUN).
    """
    dest_parts = [p for p in dest.split("/") if p not in ("", ".")]
    is_root = os.getuid() == 0
    dirs: list[tuple[Path, tarfile.TarInfo]] = []

    def image_path(name: str) -> str:
        parts = list(dest_parts)
        for part in name.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if len(parts) <= len(dest_parts):
                    raise BuildError(f"{archive.name}: member {name!r} would land outside {dest or '/'}")
                parts.pop()
            else:
                parts.append(part)
        return "/" + "/".join(parts)

    def clear(target: Path, keep_dir: bool) -> None:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        elif target.is_dir() and not keep_dir:
            shutil.rmtree(target)

    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                path = image_path(member.name)
                if ensure is not None:
                    ensure(path.rsplit("/", 1)[0] or "/")
                target = resolve_in_root(root, path, follow_last=False)
                if target == root:
                    continue  # "./" itself: dest already exists
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.isdir():
                    clear(target, keep_dir=True)
                    target.mkdir(exist_ok=True)
                    os.chmod(target, 0o700)  # writable while its members are extracted; mode set at the end
                    dirs.append((target, member))
                elif member.isreg():
                    clear(target, keep_dir=False)
                    source = tar.extractfile(member)
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as handle:
                        if source is not None:
                            shutil.copyfileobj(source, handle, 1 << 20)
                        os.fchmod(handle.fileno(), member.mode & 0o7777)
                    os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
                elif member.issym():
                    clear(target, keep_dir=False)
                    os.symlink(member.linkname, target)
                elif member.islnk():
                    source_path = resolve_in_root(root, image_path(member.linkname), follow_last=False)
                    if not source_path.is_file() or source_path.is_symlink():
                        raise BuildError(f"{archive.name}: hard link {member.name!r} names "
                                         f"{member.linkname!r}, which is not a regular file in the archive")
                    clear(target, keep_dir=False)
                    os.link(source_path, target)
                else:
                    continue  # devices, fifos: never part of an image layer
                uid, gid = chown or (member.uid, member.gid)
                if is_root:
                    os.lchown(target, uid, gid)
                elif (uid, gid) != (0, 0):
                    owners[target.relative_to(root).as_posix()] = (uid, gid)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BuildError(f"cannot extract {archive.name}: {exc}") from None
    for target, member in reversed(dirs):  # children first, so a read-only parent is set last
        os.chmod(target, member.mode & 0o7777)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)
