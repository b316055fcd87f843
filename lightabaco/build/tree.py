"""The build's working tree: chroot-style path resolution, account lookups, laying out base layers.

Helpers of builder.py (standard library and the sandbox library only). Every path inside the tree is
walked by lightabaco.sandbox.safepath, the one chroot-safe walker the unpacker uses too: fd-relative,
O_NOFOLLOW at every step, the image's own symlinks read and applied with chroot semantics. The tree
holds base image content and build steps' output, so a directory on the way may be a symlink to the
host's `/`: the walker makes that point inside the tree, and the *at() calls on the fd it returns
never follow anything.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lightabaco.sandbox.safepath import (ALLOW, CREATE, Entry, Prepare, UnsafePath, locate, lstat_at, open_beneath,
                                         open_root, remove_at, resolve_in_root as resolve_dir)

from .containerfile import BuildError
from .oci_write import read_layout

# Directories a build creates on the way to a destination (COPY, ADD, WORKDIR), as `docker build` does.
NEW_DIR_MODE = 0o755


def image_parts(path: str) -> list[str]:
    """The components of an absolute path inside the image (the walker skips empty ones and `.`)."""
    return path.split("/")


def unsafe_to_build_error(exc: UnsafePath, path: str) -> BuildError:
    """The walker's refusal as the builder's error, saying what to change."""
    if exc.reason == "loop":
        return BuildError(f"too many symlinks resolving {path} in the image: fix the link loop at {exc.where}")
    if exc.reason == "notdir":
        return BuildError(f"{exc.where} is not a directory in the image (resolving {path}): "
                          "choose a destination below a directory")
    if exc.reason == "missing":
        return BuildError(f"path {exc.where} does not exist in the image (resolving {path})")
    return BuildError(f"cannot resolve {path} in the image: {exc}")


@contextmanager
def tree_root(root: Path) -> Iterator[int]:
    """A directory fd for the build tree (made by the builder: trusted), closed on exit."""
    fd = open_root(root)
    try:
        yield fd
    finally:
        os.close(fd)


def locate_in_tree(root_fd: int, path: str, *, follow_last: bool = True, missing: str = CREATE,
                   prepare: Prepare | None = None) -> Entry:
    """safepath.locate for a builder path: missing directories on the way are made (NEW_DIR_MODE) by default."""
    try:
        return locate(root_fd, image_parts(path), follow_last=follow_last, missing=missing, mode=NEW_DIR_MODE,
                      prepare=prepare)
    except UnsafePath as exc:
        raise unsafe_to_build_error(exc, path) from None


def dir_in_tree(root_fd: int, path: str, *, prepare: Prepare | None = None) -> tuple[int, list[str]]:
    """The directory `path` of the image (made, with its parents, when missing): (fd, real parts)."""
    try:
        return resolve_dir(root_fd, image_parts(path), missing=CREATE, mode=NEW_DIR_MODE, prepare=prepare)
    except UnsafePath as exc:
        raise unsafe_to_build_error(exc, path) from None


def resolve_in_root(root: Path, path: str, follow_last: bool = True) -> Path:
    """Where `path` (absolute inside the image) lands on the host, resolving symlinks as a chroot would,
    so that an image's `bin -> usr/bin` is followed but nothing can point outside the tree. Creates
    nothing (missing names are kept as they are). For reports and tests: the builder itself acts on
    the walker's fds, never on this path."""
    with tree_root(root) as rfd:
        try:
            with locate(rfd, image_parts(path), follow_last=follow_last, missing=ALLOW) as entry:
                return Path(root, *entry.parts)
        except UnsafePath as exc:
            raise unsafe_to_build_error(exc, path) from None


def read_image_file(root_fd: int, path: str, prepare: Prepare | None = None) -> str | None:
    """The text of a regular file of the image (symlinks followed chroot-style), None if there is none."""
    try:
        entry = locate(root_fd, image_parts(path), missing=ALLOW, prepare=prepare)
    except UnsafePath:
        return None
    with entry:
        st = entry.lstat()
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=entry.dir_fd)
    with os.fdopen(fd, "rb") as handle:
        return handle.read().decode(errors="replace")


def lookup_ids(root: Path, spec: str, prepare: Prepare | None = None) -> tuple[int, int]:
    """uid, gid for `user[:group]` using the image's own /etc/passwd and /etc/group."""
    user, _, group = spec.partition(":")

    def table(name: str) -> dict[str, list[str]]:
        with tree_root(root) as rfd:
            text = read_image_file(rfd, f"/etc/{name}", prepare)
        rows = (text or "").splitlines()
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
            self.index = _with_parents(json.loads(cached.read_text()))
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
        self.index = _with_parents(index)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, cached)

    def prepare(self, dir_fd: int, dir_parts: list[str], name: str) -> None:
        """The walker's `prepare` hook: lay out the base's node `name` in the real directory `dir_fd`
        (reached by the walker from the tree's root, so `dir_parts` is its path in the image)."""
        entry = self.index.get("/".join(dir_parts + [name]))
        if not entry:
            return
        try:
            if entry[0] == "l":
                os.symlink(entry[1], name, dir_fd=dir_fd)
            elif entry[0] == "d":
                os.mkdir(name, 0o700, dir_fd=dir_fd)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    os.fchmod(fd, entry[1] | 0o700)
                finally:
                    os.close(fd)
            elif entry[0] == "f":
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=dir_fd)
                with os.fdopen(fd, "w") as handle:
                    handle.write(entry[1])
        except FileExistsError:
            pass  # already there (laid out before, or written by a step): the tree wins

    def ensure(self, root: Path, path: str) -> None:
        """Create, inside root, the base's nodes that resolving `path` walks through."""
        with tree_root(root) as rfd:
            try:
                locate(rfd, image_parts(path), missing=ALLOW, prepare=self.prepare).close()
            except UnsafePath as exc:
                raise unsafe_to_build_error(exc, path) from None


def _with_parents(index: dict[str, list]) -> dict[str, list]:
    """Layers may omit a directory's own entry: the walker stops at a missing directory, so give every
    entry its parents (mode 0755, as tar would make them)."""
    for name in list(index):
        parts = name.split("/")
        for i in range(1, len(parts)):
            index.setdefault("/".join(parts[:i]), ["d", 0o755])
    return index


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
                    chown: tuple[int, int] | None = None, prepare: Prepare | None = None) -> None:
    """Extract a tar archive (plain, gzip, xz or bzip2) into the image tree at `dest`, as ADD does.

    Written here rather than with tarfile's extraction filters (Python >= 3.11.4 only; Debian 12 ships
    3.11.2). Nothing can land outside `root`: a member name that climbs above `dest` is refused, and every
    path is walked by safepath (chroot semantics, fd-relative, O_NOFOLLOW), so a symlink met on the way,
    from the base image or from an earlier member, points inside the image and never at the host. Entries
    are created with the *at() calls on the walker's directory fd after removing what was there (files
    with O_EXCL|O_NOFOLLOW), hard links must name a regular file inside the tree, and device nodes and
    fifos are skipped. Owners come from the archive (or `chown`); an unprivileged build cannot chown, so
    it records them in `owners` for the layer's tar headers. `prepare` is the walker's hook (the
    Skeleton of builds without RUN lays out the base's nodes on the way).
    """
    dest_parts = [p for p in dest.split("/") if p not in ("", ".")]
    is_root = os.getuid() == 0
    dirs: list[tuple[list[str], tarfile.TarInfo]] = []

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

    with tree_root(root) as rfd:
        try:
            with tarfile.open(archive) as tar:
                for member in tar:
                    path = image_path(member.name)
                    with locate_in_tree(rfd, path, follow_last=False, prepare=prepare) as entry:
                        if not entry.name:
                            continue  # "./" itself: dest already exists
                        if _extract_member(tar, member, entry, rfd, image_path, archive):
                            if member.isdir():
                                dirs.append((entry.parts, member))
                            uid, gid = chown or (member.uid, member.gid)
                            if is_root:
                                os.chown(entry.name, uid, gid, dir_fd=entry.dir_fd, follow_symlinks=False)
                            elif (uid, gid) != (0, 0):
                                owners["/".join(entry.parts)] = (uid, gid)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BuildError(f"cannot extract {archive.name}: {exc}") from None
        for parts, member in reversed(dirs):  # children first, so a read-only parent is set last
            try:
                fd = open_beneath(rfd, parts)  # a later member may have replaced it: then it is not ours
            except UnsafePath:
                continue
            try:
                os.fchmod(fd, member.mode & 0o7777)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, entry: Entry, root_fd: int,
                    image_path: Callable[[str], str], archive: Path) -> bool:
    """Write one member at `entry`; False when it is a kind an image layer never holds (skipped)."""
    dfd, name = entry.dir_fd, entry.name
    if member.isdir():
        _clear(dfd, name, keep_dir=True)
        try:
            os.mkdir(name, 0o700, dir_fd=dfd)
        except FileExistsError:
            pass
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        try:
            os.fchmod(fd, 0o700)  # writable while its members are extracted; mode set at the end
        finally:
            os.close(fd)
    elif member.isreg():
        _clear(dfd, name, keep_dir=False)
        source = tar.extractfile(member)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        with os.fdopen(fd, "wb") as handle:
            if source is not None:
                shutil.copyfileobj(source, handle, 1 << 20)
            os.fchmod(handle.fileno(), member.mode & 0o7777)
            handle.flush()
            os.utime(handle.fileno(), (member.mtime, member.mtime))
    elif member.issym():
        _clear(dfd, name, keep_dir=False)
        os.symlink(member.linkname, name, dir_fd=dfd)
    elif member.islnk():
        try:
            source = locate(root_fd, image_parts(image_path(member.linkname)), follow_last=False, missing=ALLOW)
        except UnsafePath:
            source = None
        try:
            st = source.lstat() if source is not None else None
            if st is None or not stat.S_ISREG(st.st_mode):
                raise BuildError(f"{archive.name}: hard link {member.name!r} names "
                                 f"{member.linkname!r}, which is not a regular file in the archive")
            _clear(dfd, name, keep_dir=False)
            os.link(source.name, name, src_dir_fd=source.dir_fd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            if source is not None:
                source.close()
    else:
        return False  # devices, fifos: never part of an image layer
    return True


def _clear(dir_fd: int, name: str, keep_dir: bool) -> None:
    """Make room for a new entry `name`: remove what is there (never following a link), except a
    directory when a directory is coming."""
    st = lstat_at(dir_fd, name)
    if st is None or (keep_dir and stat.S_ISDIR(st.st_mode)):
        return
    remove_at(dir_fd, name)
