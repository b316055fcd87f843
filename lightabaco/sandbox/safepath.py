"""The one chroot-safe path walker: filesystem operations relative to directory fds that never follow a symlink.

Used by everything that writes into a tree holding untrusted content: the image unpacker
(lightabaco.images.unpack) and the Containerfile builder (lightabaco.build). Such trees (image layers,
base images, build steps' output) may hold symlinks to anywhere on the host. Every function here works
one path component at a time on a directory fd, opening with O_NOFOLLOW|O_DIRECTORY and using the *at()
forms (fstatat/unlinkat/fchownat/utimensat with AT_SYMLINK_NOFOLLOW, linkat without AT_SYMLINK_FOLLOW),
so no syscall ever resolves a symlink stored in the tree, whatever the tree holds or how it changes
between two calls.

The image's own symlinks still mean what they mean inside the image: the walker reads them itself and
applies them with chroot semantics (an absolute target restarts at the root, `..` stops there).

  resolve_in_root(root_fd, parts, missing=ERROR|CREATE, ...) -> (dir fd, real parts)   a directory
  locate(root_fd, parts, follow_last=, missing=ALLOW|CREATE|ERROR, ...) -> Entry       any entry:
      the real directory holding it (Entry.dir_fd) and its name there, for the caller's *at() calls
  open_root, open_beneath, open_dir_at, lstat_at, walk_tree, remove_at    no links at all

What happens at a missing directory on the way is the caller's policy (ALLOW / CREATE with the mode,
owner and `created` callback the caller gives / ERROR); `prepare` lets the builder lay out a base
image's node just before the walker looks at it. Errors are UnsafePath with a `reason`.

Functions take and return raw fds (ints); every fd returned is the caller's to close. Standard library only.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = getattr(os, "O_PATH", 0) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_PLAIN_DIR = (errno.ELOOP, errno.ENOTDIR)


class UnsafePath(Exception):
    """A path cannot be walked without following a link (or does not lead to a directory).

    `reason` is one of "missing", "symlink", "notdir", "loop", "depth", "name".
    """

    def __init__(self, reason: str, where: list[str], message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.where = "/" + "/".join(where)


def open_root(path: str | os.PathLike[str]) -> int:
    """A directory fd for the top of a tree (a path the caller made and trusts), not following a link."""
    return os.open(path, DIR_FLAGS)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of one entry of a directory, or None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _check_name(name: str, where: list[str]) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UnsafePath("name", where + [name], f"{name!r} is not a plain path component")


def open_dir_at(dir_fd: int, name: str, where: list[str] | None = None) -> int:
    """Open the directory `name` of `dir_fd`; UnsafePath if it is a symlink, not a directory or missing."""
    where = where or []
    _check_name(name, where)
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise UnsafePath("missing", where + [name], f"/{'/'.join(where + [name])} does not exist") from None
    except OSError as e:
        if e.errno not in _NOT_A_PLAIN_DIR:
            raise
        st = lstat_at(dir_fd, name)
        reason = "symlink" if st is not None and stat.S_ISLNK(st.st_mode) else "notdir"
        raise UnsafePath(reason, where + [name], f"/{'/'.join(where + [name])} is "
                         f"{'a symbolic link' if reason == 'symlink' else 'not a directory'}") from None


def open_beneath(root_fd: int, parts: list[str] | tuple[str, ...]) -> int:
    """Open root/parts[0]/parts[1]/... where every component must be a real directory (no link, no ..)."""
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            nfd = open_dir_at(fd, name, list(parts[:i]))
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


# What the walker does at a directory on the way that does not exist (the caller's policy):
ALLOW = "allow"    # stop creating nothing: `locate` reports the names still missing (`Entry.absent`)
CREATE = "create"  # make it: mode, owner and `created(path, fd)` as the caller gives
ERROR = "error"    # raise UnsafePath("missing")
MAX_LINKS = 40
MAX_DEPTH = 256

Prepare = Callable[[int, list[str], str], None]
Created = Callable[[list[str], int], None]


@dataclass
class Entry:
    """Where a path lands: the real directory holding it and its name there.

    `dir_fd` is the caller's to close (or use the Entry as a context manager). `name` is "" when the
    path is the root itself. Under ALLOW, `absent` lists the directories below `dir_parts` that do not
    exist (then `name` does not exist either); it is empty otherwise.
    """

    dir_fd: int
    dir_parts: list[str]
    name: str
    absent: list[str] = field(default_factory=list)

    @property
    def parts(self) -> list[str]:
        """The entry's path from the root, real names (missing ones included)."""
        return self.dir_parts + self.absent + ([self.name] if self.name else [])

    def lstat(self) -> os.stat_result | None:
        """lstat of the entry itself (None when it does not exist)."""
        if self.absent:
            return None
        if not self.name:
            return os.fstat(self.dir_fd)
        return lstat_at(self.dir_fd, self.name)

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> "Entry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_in_root(root_fd: int, parts: Sequence[str], *, missing: str = ERROR, mode: int = 0o700,
                    owner: tuple[int, int] | None = None, created: Created | None = None,
                    prepare: Prepare | None = None, max_links: int = MAX_LINKS,
                    max_depth: int = MAX_DEPTH) -> tuple[int, list[str]]:
    """Resolve `parts` as a directory inside the tree at `root_fd`, as if root_fd were `/`.

    Symlinks met on the way are read (readlinkat) and interpreted with chroot semantics: an absolute
    target restarts at the root, `..` never climbs above it, at most `max_links` links. The kernel never
    follows any of them. A missing directory is an error (ERROR) or made (CREATE, see `locate`).
    Returns (fd of the directory, its path as real directory names from the root). Raises UnsafePath:
    "missing", "notdir", "loop" (too many links), "depth" (deeper than `max_depth`) or "name".
    """
    if missing not in (CREATE, ERROR):
        raise ValueError(f"missing={missing!r}: a directory must exist or be made (CREATE, ERROR); "
                         "use locate() to look a path up without creating anything")
    fd, resolved, _, _ = _walk(root_fd, parts, entry=False, follow_last=True, missing=missing, mode=mode,
                               owner=owner, created=created, prepare=prepare, max_links=max_links,
                               max_depth=max_depth)
    return fd, resolved


def locate(root_fd: int, parts: Sequence[str], *, follow_last: bool = True, missing: str = ERROR,
           mode: int = 0o700, owner: tuple[int, int] | None = None, created: Created | None = None,
           prepare: Prepare | None = None, max_links: int = MAX_LINKS, max_depth: int = MAX_DEPTH) -> Entry:
    """Where the path `parts` lands inside the tree at `root_fd` (chroot semantics, as resolve_in_root):
    the real directory that holds its last component, and that component's name.

    The directories on the way are resolved like resolve_in_root; the last component is only looked
    at: it may be missing or of any type. A final symlink is followed (chroot-style) unless
    `follow_last` is False (lstat semantics: the caller acts on the link itself).

    `missing` says what happens at a directory on the way that does not exist:
      ALLOW   nothing is created; the Entry lists the missing names in `absent` (lookups: "not there");
      CREATE  mkdirat with `mode` (exactly: umask does not apply), fchown to `owner` when given, then
              `created(path, fd)` is told (so the caller can record or fix it later);
      ERROR   UnsafePath("missing").
    `prepare(dir_fd, dir_parts, name)` runs before each component is looked at (the last one only
    when it is followed), with the real directory it is in: the builder lays out the base image's
    node there on demand. Every fd handed to a callback stays the walker's.
    """
    if missing not in (ALLOW, CREATE, ERROR):
        raise ValueError(f"missing={missing!r}: use safepath.ALLOW, CREATE or ERROR")
    fd, resolved, absent, name = _walk(root_fd, parts, entry=True, follow_last=follow_last, missing=missing,
                                       mode=mode, owner=owner, created=created, prepare=prepare,
                                       max_links=max_links, max_depth=max_depth)
    return Entry(fd, resolved, name, absent)


def _walk(root_fd: int, parts: Sequence[str], *, entry: bool, follow_last: bool, missing: str, mode: int,
          owner: tuple[int, int] | None, created: Created | None, prepare: Prepare | None,
          max_links: int, max_depth: int) -> tuple[int, list[str], list[str], str]:
    """The one walk behind resolve_in_root and locate: (fd, real parts, absent names, last name)."""
    resolved: list[str] = []
    absent: list[str] = []  # ALLOW: names below `resolved` that do not exist (no fd to hold for them)
    fd = os.dup(root_fd)
    todo = list(reversed(parts))
    links = 0
    try:
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if absent:
                    absent.pop()
                elif resolved:
                    resolved.pop()
                    os.close(fd)
                    fd = open_beneath(root_fd, resolved)
                continue
            _check_name(comp, resolved + absent)
            last = entry and all(c in ("", ".") for c in todo)
            if absent:
                if last:
                    return fd, resolved, absent, comp
                absent.append(comp)
                continue
            if last:
                if not follow_last:
                    return fd, resolved, [], comp
                if prepare is not None:
                    prepare(fd, resolved, comp)
                st = lstat_at(fd, comp)
                if st is None or not stat.S_ISLNK(st.st_mode):
                    return fd, resolved, [], comp
                links += 1
                if links > max_links:
                    raise UnsafePath("loop", resolved + [comp], "too many levels of symbolic links") from None
                fd, resolved = _follow(root_fd, fd, resolved, comp, todo)
                continue
            if prepare is not None:
                prepare(fd, resolved, comp)
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if missing == ERROR:
                    raise UnsafePath("missing", resolved + [comp],
                                     f"/{'/'.join(resolved + [comp])} does not exist") from None
                if missing == ALLOW:
                    absent.append(comp)
                    continue
                nfd = _make_dir(fd, comp, resolved, mode, owner, created)
            except OSError as e:
                if e.errno not in _NOT_A_PLAIN_DIR:
                    raise
                st = lstat_at(fd, comp)
                if st is None or not stat.S_ISLNK(st.st_mode):
                    raise UnsafePath("notdir", resolved + [comp],
                                     f"/{'/'.join(resolved + [comp])} is not a directory") from None
                links += 1
                if links > max_links:
                    raise UnsafePath("loop", resolved + [comp], "too many levels of symbolic links") from None
                fd, resolved = _follow(root_fd, fd, resolved, comp, todo)
                continue
            os.close(fd)
            fd = nfd
            resolved.append(comp)
            if len(resolved) > max_depth:
                raise UnsafePath("depth", resolved, f"the path resolves to more than {max_depth} directories")
        if not entry:
            return fd, resolved, [], ""
        # The path ended in a directory (or `..`): its entry is its name in its parent.
        if absent:
            return fd, resolved, absent[:-1], absent[-1]
        if not resolved:
            return fd, [], [], ""
        parent = open_beneath(root_fd, resolved[:-1])
        os.close(fd)
        return parent, resolved[:-1], [], resolved[-1]
    except BaseException:
        os.close(fd)
        raise


def _follow(root_fd: int, fd: int, resolved: list[str], name: str, todo: list[str]) -> tuple[int, list[str]]:
    """Queue the target of the symlink `name` (read, never followed by the kernel) in place of it."""
    target = os.readlink(name, dir_fd=fd)
    if target.startswith("/"):
        os.close(fd)
        fd, resolved = os.dup(root_fd), []
    todo.extend(reversed(target.split("/")))
    return fd, resolved


def _make_dir(fd: int, name: str, where: list[str], mode: int, owner: tuple[int, int] | None,
              created: Created | None) -> int:
    os.mkdir(name, 0o700, dir_fd=fd)
    nfd = open_dir_at(fd, name, where)
    try:
        if owner is not None:
            os.fchown(nfd, *owner)
        os.fchmod(nfd, mode)  # exactly `mode`, whatever the umask (and after fchown, which clears set-id bits)
        if created is not None:
            created(where + [name], nfd)
    except BaseException:
        os.close(nfd)
        raise
    return nfd


def walk_tree(root_fd: int) -> Iterator[tuple[int, str, os.stat_result]]:
    """Every entry below root_fd, parents before children: (fd of its directory, name, lstat).

    Directories are entered only through O_NOFOLLOW|O_DIRECTORY opens, so a symlink is reported but
    never entered, even one swapped in during the walk. The caller may act on the entry with *at()
    calls on the given fd while the walk is paused at it. Iterative: depth costs fds, not recursion.
    """
    stack: list[tuple[int, Iterator[str]]] = [(os.dup(root_fd), iter(sorted(os.listdir(root_fd))))]
    try:
        while stack:
            fd, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            st = lstat_at(fd, name)
            if st is None:
                continue
            yield fd, name, st
            if stat.S_ISDIR(st.st_mode):
                try:
                    cfd = os.open(name, DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in _NOT_A_PLAIN_DIR + (errno.ENOENT,):
                        continue  # replaced meanwhile: not a directory to enter any more
                    raise
                try:
                    listing = sorted(os.listdir(cfd))
                except BaseException:
                    os.close(cfd)
                    raise
                stack.append((cfd, iter(listing)))
    finally:
        for fd, _ in stack:
            os.close(fd)


def _open_for_removal(dir_fd: int, name: str) -> int | None:
    """Open a directory to empty it, giving it u+rwx first when it lacks them; None if not a dir now."""
    try:
        pfd = os.open(name, _PATH_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in _NOT_A_PLAIN_DIR:
            return None
        raise
    try:
        st = os.fstat(pfd)
        if st.st_mode & 0o700 != 0o700:
            # fchmod refuses O_PATH fds; chmod through /proc acts on the inode we hold, not on a name.
            os.chmod(f"/proc/self/fd/{pfd}", stat.S_IMODE(st.st_mode) | 0o700)
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)


def remove_at(dir_fd: int, name: str) -> None:
    """Remove the entry `name` of `dir_fd` (a whole tree if it is a directory), never following a link.

    A missing entry is not an error. Directories without u+rwx get them first (when we may chmod).
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        _unlink_quiet(dir_fd, name)
        return
    top = _open_for_removal(dir_fd, name)
    if top is None:
        _unlink_quiet(dir_fd, name)
        return
    frames: list[tuple[int, str, int, list[str]]] = [(dir_fd, name, top, os.listdir(top))]
    try:
        while frames:
            parent, own, fd, names = frames[-1]
            if names:
                child = names.pop()
                cst = lstat_at(fd, child)
                if cst is None:
                    continue
                if stat.S_ISDIR(cst.st_mode):
                    cfd = _open_for_removal(fd, child)
                    if cfd is None:
                        _unlink_quiet(fd, child)
                        continue
                    try:
                        listing = os.listdir(cfd)
                    except BaseException:
                        os.close(cfd)
                        raise
                    frames.append((fd, child, cfd, listing))
                else:
                    _unlink_quiet(fd, child)
                continue
            frames.pop()
            os.close(fd)
            try:
                os.rmdir(own, dir_fd=parent)
            except FileNotFoundError:
                pass
    finally:
        for _, _, fd, _ in frames:
            os.close(fd)


def _unlink_quiet(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
