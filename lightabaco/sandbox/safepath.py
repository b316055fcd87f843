"""Filesystem operations relative to directory file descriptors that never follow a symlink.

Trees written from untrusted input (image layers, build contexts) may hold symlinks to anywhere on
the host. Every function here works one path component at a time on a directory fd, opening with
O_NOFOLLOW|O_DIRECTORY and using the *at() forms (fstatat/unlinkat/fchownat/utimensat with
AT_SYMLINK_NOFOLLOW, linkat without AT_SYMLINK_FOLLOW), so no syscall ever resolves a symlink stored
in the tree, whatever the tree holds or how it changes between two calls. Callers that need the
image's own symlink semantics inside the tree use `resolve_in_root`, which reads links itself and
interprets them with chroot semantics.

Functions take and return raw fds (ints); every fd returned is the caller's to close.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Iterator

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


def resolve_in_root(root_fd: int, parts: list[str], *, create: bool = False,
                    on_create: Callable[[list[str], int], None] | None = None,
                    max_links: int = 40, max_depth: int = 256) -> tuple[int, list[str]]:
    """Resolve `parts` as a directory path inside the tree at `root_fd`, as if root_fd were `/`.

    Symlinks met on the way are read (readlinkat) and interpreted with chroot semantics: an absolute
    target restarts at the root, `..` never climbs above it, at most `max_links` links. The kernel never
    follows any of them. With `create`, missing directories are made (mode 0700) and `on_create(path,
    fd)` is called for each. Returns (fd of the directory, its path as real directory names from the
    root). Raises UnsafePath: "missing", "notdir", "loop" (too many links) or "depth" (the resolved
    path is more than `max_depth` directories deep).
    """
    resolved: list[str] = []
    fd = os.dup(root_fd)
    todo = list(reversed(parts))
    links = 0
    try:
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if resolved:
                    resolved.pop()
                    os.close(fd)
                    fd = open_beneath(root_fd, resolved)
                continue
            _check_name(comp, resolved)
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise UnsafePath("missing", resolved + [comp],
                                     f"/{'/'.join(resolved + [comp])} does not exist") from None
                os.mkdir(comp, 0o700, dir_fd=fd)
                nfd = open_dir_at(fd, comp, resolved)
                if on_create is not None:
                    try:
                        on_create(resolved + [comp], nfd)
                    except BaseException:
                        os.close(nfd)
                        raise
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
                target = os.readlink(comp, dir_fd=fd)
                if target.startswith("/"):
                    resolved = []
                    os.close(fd)
                    fd = os.dup(root_fd)
                todo.extend(reversed(target.split("/")))
                continue
            os.close(fd)
            fd = nfd
            resolved.append(comp)
            if len(resolved) > max_depth:
                raise UnsafePath("depth", resolved, f"the path resolves to more than {max_depth} directories")
        return fd, resolved
    except BaseException:
        os.close(fd)
        raise


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
