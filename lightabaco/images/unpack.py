"""The safe layer unpacker: applies OCI layer tars onto one flattened rootfs directory.

Threats handled (sandbox-notes §4, §9; issue 8): path traversal (`..` is refused; absolute names are
taken relative to the rootfs), symlink escapes, hard links to host files (the target must already exist
inside the rootfs), whiteouts pointing outside, device nodes (skipped), setuid/setgid bits (dropped),
and expansion bombs (limits on bytes, inodes, entries, path depth and length, checked as each entry
arrives, before it is written).

No syscall here follows a symlink stored in the rootfs: everything works on directory fds
(`lightabaco.sandbox.safepath`), one component at a time with O_NOFOLLOW and the *at() calls. The
image's own symlinks are interpreted by `resolve_in_root` (chroot semantics, links read, never followed
by the kernel). Work deferred to the end (directory modes and mtimes) is keyed by the directory's
inode and re-checked against what is on disk then, so replacing a directory by a link in between
changes nothing outside. Nothing here calls tarfile's extract().
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import zstandard

from lightabaco.sandbox.errors import ImageError
from lightabaco.sandbox.fsutil import force_rmtree
from lightabaco.sandbox.safepath import (CREATE, ERROR, UnsafePath, lstat_at, open_beneath, open_dir_at, open_root,
                                         remove_at, resolve_in_root, walk_tree)

# Bump when the unpacked tree would differ for the same image (the store keys rootfs dirs by it).
# 2: mount points are always plain files/dirs made by lightabaco (issue 8, item 8); older trees are
#    unpacked again from the stored blobs on first use.
UNPACKER_VERSION = 2
MAX_SYMLINKS = 40
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# pax and GNU long-name headers are read into memory whole by tarfile: refuse absurd ones up front.
MAX_TAR_HEADER_BYTES = 1 << 20

Progress = Callable[[str, int, "int | None", str], None]

__all__ = ["UNPACKER_VERSION", "UnpackLimits", "UnpackStats", "UnpackQuotaError", "Budget", "LayerSource",
           "Unpacker", "split_name", "secure_resolve", "prepare_rootfs", "tree_size", "chown_tree",
           "force_rmtree", "MOUNT_DIRS", "MOUNT_FILES"]


class UnpackQuotaError(ImageError):
    """An image (or the store as a whole) would exceed a size or inode limit; the message names the setting."""


@dataclass
class UnpackLimits:
    """Caps that protect the host from hostile or broken images (per image; 0 = unlimited)."""

    max_bytes: int = 8 << 30  # file data in the layers (LIGHTABACO_IMAGE_MAX_BYTES)
    max_inodes: int = 500_000  # files, directories, links and fifos created (LIGHTABACO_IMAGE_MAX_INODES)
    max_entries: int = 2_000_000  # tar members over all layers (whiteouts included)
    max_depth: int = 256  # path components of one member name, and of a resolved directory
    max_path: int = 4096  # characters of one member name


@dataclass
class Budget:
    """What the image store's home quota leaves for one unpack (None: no limit on that)."""

    bytes_left: int | None = None
    inodes_left: int | None = None
    # "bytes" or "inodes" -> the refusal message (names the quota, the setting and how to free space)
    explain: Callable[[str], str] = lambda kind: f"the image store's {kind} quota is used up"


@dataclass
class UnpackStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    fifos: int = 0
    devices_skipped: int = 0
    whiteouts: int = 0
    entries: int = 0
    bytes: int = 0
    inodes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------------
# Paths


def split_name(name: str, limits: UnpackLimits | None = None) -> list[str]:
    """Split a member name into components: drops "" and "." (so a leading / is stripped), refuses ".."."""
    if limits and len(name) > limits.max_path:
        raise ImageError(f"layer entry name is {len(name)} characters long (limit {limits.max_path}): "
                         f"{name[:80]!r}...; the image is malformed or hostile")
    if "\0" in name:
        raise ImageError(f"layer entry {name!r} contains a NUL byte; the image is malformed or hostile")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer entry {name!r} contains '..' (path traversal); refusing to unpack this image")
    if limits and len(parts) > limits.max_depth:
        raise ImageError(f"layer entry {name[:80]!r} is {len(parts)} directories deep (limit {limits.max_depth})")
    return parts


def _unsafe_to_image_error(e: UnsafePath, parts: list[str]) -> ImageError:
    wanted = "/" + "/".join(parts)
    if e.reason == "missing":
        return ImageError(f"path {e.where} does not exist in the image (resolving {wanted})")
    if e.reason == "loop":
        return ImageError(f"too many levels of symbolic links resolving {wanted} in the image")
    if e.reason == "depth":
        return ImageError(f"{wanted} resolves to a path deeper than the depth limit in the image")
    return ImageError(f"{e.where} is not a directory in the image but a layer puts entries under it "
                      f"(resolving {wanted})")


def secure_resolve(root: Path, parts: list[str], *, create: bool = False) -> Path:
    """The real directory that `parts` names inside `root` (chroot semantics), as a path.

    For callers and tests that want a path; the unpacker itself keeps the fd (safepath.resolve_in_root).
    """
    rfd = open_root(root)
    try:
        fd, resolved = resolve_in_root(rfd, parts, missing=CREATE if create else ERROR, max_links=MAX_SYMLINKS)
        os.close(fd)
    except UnsafePath as e:
        raise _unsafe_to_image_error(e, parts) from None
    finally:
        os.close(rfd)
    return Path(root, *resolved)


# ---------------------------------------------------------------------------------------------------
# Streams: hash the compressed bytes and the tar, decompress by magic


class HashingReader:
    """A read-only stream that hashes (and counts) everything read through it."""

    def __init__(self, raw: BinaryIO, prefix: bytes = b"") -> None:
        self.raw = raw
        self.prefix = prefix
        self.hash = hashlib.sha256()
        self.count = 0
        self.on_read: Callable[[int], None] | None = None

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n is None or n < 0:
                data = self.prefix + self.raw.read()
            else:
                data = self.prefix[:n]
                if len(data) < n:
                    data += self.raw.read(n - len(data))
                self.prefix = self.prefix[len(data):] if len(data) <= len(self.prefix) else b""
        else:
            data = self.raw.read(n if n is not None else -1)
        if data:
            self.hash.update(data)
            self.count += len(data)
            if self.on_read:
                self.on_read(len(data))
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _read_exact_prefix(raw: BinaryIO, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = raw.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def open_decompressed(raw: BinaryIO) -> tuple[HashingReader, HashingReader]:
    """Wrap a layer blob stream: returns (compressed hasher, uncompressed tar hasher).

    The format is detected by magic bytes, not by media type (media types lie; gzip/zstd/plain).
    """
    head = _read_exact_prefix(raw, 4)
    outer = HashingReader(raw, head)
    if head[:2] == b"\x1f\x8b":
        return outer, HashingReader(gzip.GzipFile(fileobj=outer, mode="rb"))  # type: ignore[call-overload]
    if head == b"\x28\xb5\x2f\xfd":
        zreader = zstandard.ZstdDecompressor().stream_reader(outer, read_across_frames=True)  # type: ignore[arg-type]
        return outer, HashingReader(zreader)
    return outer, outer  # an uncompressed layer: one stream, one digest


# ---------------------------------------------------------------------------------------------------
# Applying layers


@dataclass
class LayerSource:
    """One layer to apply: how to open its blob and what it must hash to."""

    open: Callable[[], BinaryIO]
    digest: str | None  # compressed blob digest (None: not checked here, e.g. verified on copy)
    diff_id: str | None  # digest of the uncompressed tar (from the config's rootfs.diff_ids)
    size: int | None = None


@dataclass
class _LayerState:
    added: set[tuple[str, ...]] = field(default_factory=set)


@dataclass
class _Deferred:
    """A directory's final mode and mtime, applied only if the same inode is still at its path."""

    mode: int
    mtime: float | None
    dev: int
    ino: int


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses pax/GNU long-name headers bigger than MAX_TAR_HEADER_BYTES before tarfile reads them."""

    _HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                     tarfile.GNUTYPE_LONGLINK)

    def _proc_member(self, tarfile_: tarfile.TarFile):  # type: ignore[no-untyped-def, override]
        if self.type in self._HEADER_TYPES and self.size > MAX_TAR_HEADER_BYTES:
            raise UnpackQuotaError(f"a layer has a {self.size}-byte tar header (limit {MAX_TAR_HEADER_BYTES}); "
                                   "the image is malformed or hostile")
        return super()._proc_member(tarfile_)  # type: ignore[misc]


# Errors of the kernel that a hostile or malformed entry can provoke: reported as image errors.
_ENTRY_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT,
                 errno.EINVAL, errno.ENOTEMPTY, errno.EMLINK)


class Unpacker:
    """Applies layers in order onto `root` (an empty directory), then fixes directory modes."""

    def __init__(self, root: Path, limits: UnpackLimits | None = None, progress: Progress | None = None,
                 budget: Budget | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or UnpackLimits()
        self.progress = progress
        self.budget = budget
        self.stats = UnpackStats()
        # Final modes of directories, applied after all layers (deepest first), so that a 0555 dir from
        # a lower layer can still receive files from upper layers. Keyed by the directory's real path
        # (names of real directories from the root); each applies only to the inode recorded.
        self.dir_modes: dict[tuple[str, ...], _Deferred] = {}
        self.layer_digests: list[str] = []  # compressed digests as read (docker-archive has none to check)
        self.layer_sizes: list[int] = []
        self._root_fd = -1

    # -- public

    def apply(self, layers: Iterable[LayerSource]) -> UnpackStats:
        self._root_fd = open_root(self.root)
        try:
            self._apply_all(list(layers))
            self.finish_modes()
        finally:
            os.close(self._root_fd)
            self._root_fd = -1
        return self.stats

    def _apply_all(self, layers: list[LayerSource]) -> None:
        total = sum(layer.size or 0 for layer in layers) or None
        done = 0
        for i, layer in enumerate(layers):
            detail = f"layer {i + 1}/{len(layers)} {(layer.digest or layer.diff_id or '')[:19]}"
            with layer.open() as raw:
                outer, inner = open_decompressed(raw)
                if self.progress and total:
                    base = done

                    def tick(_n: int, base: int = base, outer: HashingReader = outer, detail: str = detail) -> None:
                        self.progress("unpack", base + outer.count, total, detail)  # type: ignore[misc]

                    outer.on_read = tick
                self._apply_tar(inner, detail)
                try:
                    inner.drain()  # the tar end marker may come before the end of the stream
                    if inner is not outer:
                        outer.drain()
                except _DECOMPRESS_ERRORS as e:
                    raise ImageError(f"{detail}: cannot decompress the end of the layer ({e}); the blob is "
                                     "corrupt, pull or import it again") from None
            done += outer.count
            self.layer_digests.append(outer.digest)
            self.layer_sizes.append(outer.count)
            if layer.digest and outer.digest != layer.digest:
                raise ImageError(f"{detail}: compressed digest is {outer.digest}, the manifest says "
                                 f"{layer.digest}; the blob is corrupt or was tampered with; pull or import "
                                 "the image again")
            if layer.diff_id and inner.digest != layer.diff_id:
                raise ImageError(f"{detail}: uncompressed digest is {inner.digest}, the image config's "
                                 f"diff_id says {layer.diff_id}; the layer is corrupt or was tampered with")
            if self.progress:
                self.progress("unpack", done, total, detail + " done")

    def finish_modes(self) -> None:
        """Apply the deferred directory modes and mtimes, to the recorded inodes only.

        Each directory is reopened from the root through real directories only (O_NOFOLLOW at every
        step) and its (st_dev, st_ino) compared with the recorded one: a directory replaced by a link,
        a file or another directory since is left alone. fchmod/futimens act on the fd, not a name.
        """
        # Deepest first, so an mtime is set after the last change below it.
        for key in sorted(self.dir_modes, key=len, reverse=True):
            want = self.dir_modes[key]
            try:
                fd = open_beneath(self._root_fd, key)
            except (UnsafePath, OSError):
                continue  # removed or replaced since: nothing of ours to fix there
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (want.dev, want.ino):
                    continue
                os.fchmod(fd, (want.mode & 0o1777) | 0o700)
                if want.mtime is not None:
                    _set_mtime(fd, want.mtime)
            finally:
                os.close(fd)
        self.dir_modes.clear()

    # -- quotas

    def _charge(self, what: str, nbytes: int = 0, inodes: int = 0) -> None:
        """Count bytes/inodes an entry is about to cost; refuse before anything is written past a limit."""
        self.stats.bytes += nbytes
        self.stats.inodes += inodes
        lim = self.limits
        if lim.max_bytes and self.stats.bytes > lim.max_bytes:
            raise UnpackQuotaError(
                f"the image unpacks to more than {lim.max_bytes} bytes (at {what!r}); refusing it. If the image "
                f"is legitimate, raise LIGHTABACO_IMAGE_MAX_BYTES (the per-image limit)")
        if lim.max_inodes and self.stats.inodes > lim.max_inodes:
            raise UnpackQuotaError(
                f"the image creates more than {lim.max_inodes} files, directories and links (at {what!r}); "
                "refusing it. If the image is legitimate, raise LIGHTABACO_IMAGE_MAX_INODES (the per-image "
                "limit)")
        b = self.budget
        if b is not None:
            if b.bytes_left is not None and self.stats.bytes > b.bytes_left:
                raise UnpackQuotaError(b.explain("bytes"))
            if b.inodes_left is not None and self.stats.inodes > b.inodes_left:
                raise UnpackQuotaError(b.explain("inodes"))

    def _record_dir(self, key: tuple[str, ...], fd_or_st: int | os.stat_result, mode: int,
                    mtime: float | None) -> None:
        st = os.fstat(fd_or_st) if isinstance(fd_or_st, int) else fd_or_st
        self.dir_modes[key] = _Deferred(mode, mtime, st.st_dev, st.st_ino)

    def _resolve(self, parts: list[str], create: bool) -> tuple[int, list[str]]:
        def made(path: list[str], fd: int) -> None:
            self._charge("/" + "/".join(path), inodes=1)
            self.stats.dirs += 1
            self._record_dir(tuple(path), fd, 0o755, None)

        return resolve_in_root(self._root_fd, parts, missing=CREATE if create else ERROR, created=made,
                               max_links=MAX_SYMLINKS, max_depth=self.limits.max_depth)

    # -- per layer

    def _apply_tar(self, stream: HashingReader, detail: str) -> None:
        state = _LayerState()
        try:
            tf = tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo)  # type: ignore[call-overload]
        except tarfile.TarError as e:
            raise ImageError(f"{detail} is not a tar archive ({e}); the image is malformed") from None
        except _DECOMPRESS_ERRORS as e:
            raise ImageError(f"{detail}: cannot decompress ({e}); the blob is corrupt, import it again") from None
        try:
            for member in tf:
                self.stats.entries += 1
                if self.stats.entries > self.limits.max_entries:
                    raise UnpackQuotaError(f"the image has more than {self.limits.max_entries} layer entries; "
                                           "refusing to unpack it")
                # Every member's data is read (written or skipped): count it before it is.
                self._charge(member.name, nbytes=max(member.size, 0))
                try:
                    self._apply_member(tf, member, state, detail)
                except UnsafePath as e:
                    raise ImageError(f"{detail}: entry {member.name!r}: {e}; the layer is malformed or "
                                     "hostile") from None
                except OSError as e:
                    if e.errno not in _ENTRY_ERRNOS:
                        raise
                    raise ImageError(f"{detail}: entry {member.name[:200]!r}: {e.strerror}; the layer is "
                                     "malformed or hostile") from None
        except tarfile.TarError as e:
            raise ImageError(f"{detail}: broken tar stream ({e}); the image is malformed, import it again") from None
        except _DECOMPRESS_ERRORS as e:
            raise ImageError(f"{detail}: cannot decompress ({e}); the blob is corrupt, import it again") from None

    def _apply_member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, state: _LayerState, detail: str) -> None:
        parts = split_name(m.name, self.limits)
        if not parts:
            if m.isdir():  # "./" entry: the root directory's own mode
                self._record_dir((), self._root_fd, m.mode, m.mtime)
            return
        base = parts[-1]
        pkey = tuple(parts[:-1])
        if any(p.startswith(WHITEOUT + WHITEOUT) for p in pkey):
            return  # inside aufs metadata dirs (.wh..wh.plnk/...): not part of the image
        if base.startswith(WHITEOUT):
            self._whiteout(parts, base, pkey, state, m, detail)
            return
        try:
            pfd, rparts = self._resolve(parts[:-1], create=True)
        except UnsafePath as e:
            raise ImageError(f"{detail}: entry {m.name!r}: {_unsafe_to_image_error(e, parts[:-1])}") from None
        try:
            self._create(tf, m, pfd, tuple(rparts), base, detail)
        finally:
            os.close(pfd)
        state.added.add(tuple(parts))

    def _whiteout(self, parts: list[str], base: str, pkey: tuple[str, ...], state: _LayerState,
                  m: tarfile.TarInfo, detail: str) -> None:
        self.stats.whiteouts += 1
        if base.startswith(WHITEOUT + WHITEOUT) and base != OPAQUE:
            return  # aufs metadata (.wh..wh.plnk and friends): not part of the image
        name = base[len(WHITEOUT):]
        if base != OPAQUE and (not name or name in (".", "..")):
            raise ImageError(f"{detail}: whiteout entry {m.name!r} names no file; the image is malformed")
        try:
            pfd, _ = self._resolve(parts[:-1], create=False)
        except UnsafePath:
            return  # hides something in a directory that does not exist: nothing to do
        try:
            if base == OPAQUE:
                self._prune_opaque(pfd, pkey, state)
            elif pkey + (name,) not in state.added:
                remove_at(pfd, name)
        finally:
            os.close(pfd)

    def _create(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, rkey: tuple[str, ...], base: str,
                detail: str) -> None:
        """Make one member `base` in the directory `pfd` (whose real path is rkey)."""
        if m.islnk():
            self._hardlink(m, pfd, rkey + (base,), detail)
            return
        existing = lstat_at(pfd, base)
        if existing is not None:
            if m.isdir() and stat.S_ISDIR(existing.st_mode):
                self._record_dir(rkey + (base,), existing, m.mode, m.mtime)
                return
            remove_at(pfd, base)  # never write through what was there (it may be a symlink)
        if m.isdir():
            self._charge(m.name, inodes=1)
            os.mkdir(base, 0o700, dir_fd=pfd)
            fd = open_dir_at(pfd, base)
            try:
                self._record_dir(rkey + (base,), fd, m.mode, m.mtime)
            finally:
                os.close(fd)
            self.stats.dirs += 1
        elif m.isreg():
            self._charge(m.name, inodes=1)
            self._regular(tf, m, pfd, base)
        elif m.issym():
            self._charge(m.name, inodes=1)
            os.symlink(m.linkname, base, dir_fd=pfd)
            self.stats.symlinks += 1
            _set_mtime((pfd, base), m.mtime)
        elif m.isfifo():
            self._charge(m.name, inodes=1)
            os.mkfifo(base, 0o600, dir_fd=pfd)
            # O_NONBLOCK: opening a fifo for reading does not wait for a writer
            fd = os.open(base, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.fchmod(fd, m.mode & 0o777)
            finally:
                os.close(fd)
            self.stats.fifos += 1
        elif m.ischr() or m.isblk():
            self.stats.devices_skipped += 1  # the sandbox gets its own /dev
        # unknown types (e.g. sparse metadata tarfile already folded) are ignored

    def _regular(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=pfd)
        try:
            src = tf.extractfile(m)
            if src is not None:
                remaining = m.size
                while remaining > 0:
                    chunk = src.read(min(remaining, 1 << 20))
                    if not chunk:
                        raise ImageError(f"layer entry {m.name!r} is truncated; the layer is corrupt")
                    _write_all(fd, chunk)
                    remaining -= len(chunk)
            # setuid, setgid and sticky dropped: they only matter to attackers (bwrap sets no_new_privs anyway)
            os.fchmod(fd, m.mode & 0o777)
            _set_mtime(fd, m.mtime)
        finally:
            os.close(fd)
        self.stats.files += 1

    def _hardlink(self, m: tarfile.TarInfo, pfd: int, key: tuple[str, ...], detail: str) -> None:
        base = key[-1]
        tparts = split_name(m.linkname, self.limits)
        if not tparts:
            raise ImageError(f"{detail}: hard link {m.name!r} has an empty target")
        try:
            tfd, trparts = self._resolve(tparts[:-1], create=False)
        except UnsafePath as e:
            raise ImageError(f"{detail}: hard link {m.name!r} -> {m.linkname!r}: target not in the image "
                             f"({_unsafe_to_image_error(e, tparts[:-1])})") from None
        try:
            tname = tparts[-1]
            st = lstat_at(tfd, tname)
            if st is None:
                raise ImageError(f"{detail}: hard link {m.name!r} -> {m.linkname!r}: the target does not exist "
                                 "in the image; the layer is malformed or hostile")
            if stat.S_ISDIR(st.st_mode):
                raise ImageError(f"{detail}: hard link {m.name!r} -> {m.linkname!r} points to a directory")
            if tuple(trparts) + (tname,) == key:
                return
            dst = lstat_at(pfd, base)
            if dst is not None:
                if (dst.st_dev, dst.st_ino) == (st.st_dev, st.st_ino):
                    return  # already that file
                remove_at(pfd, base)
            try:
                # linkat without AT_SYMLINK_FOLLOW: a symlink target is linked itself, never followed
                os.link(tname, base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise ImageError(f"{detail}: hard link {m.name!r} -> {m.linkname!r}: the target vanished "
                                 "while the link replaced its parent; the layer is malformed") from None
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                self._copy_entry(tfd, tname, pfd, base, st, m.name)
        finally:
            os.close(tfd)
        self.stats.hardlinks += 1

    def _copy_entry(self, sfd: int, sname: str, dfd: int, dname: str, st: os.stat_result, what: str) -> None:
        """A hard link the file system refused: copy the entry instead (charged as a new inode and data)."""
        self._charge(what, nbytes=st.st_size if stat.S_ISREG(st.st_mode) else 0, inodes=1)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(sname, dir_fd=sfd), dname, dir_fd=dfd)
            return
        if not stat.S_ISREG(st.st_mode):
            os.mkfifo(dname, 0o600, dir_fd=dfd)
            return
        src = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
        try:
            dst = os.open(dname, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dfd)
            try:
                while chunk := os.read(src, 1 << 20):
                    _write_all(dst, chunk)
                os.fchmod(dst, stat.S_IMODE(st.st_mode) & 0o777)
                _set_mtime(dst, st.st_mtime)
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _prune_opaque(self, dfd: int, dkey: tuple[str, ...], state: _LayerState) -> None:
        """Remove what lower layers put under dfd; keep what this layer added (at any depth)."""
        for name in os.listdir(dfd):
            key = dkey + (name,)
            if key not in state.added:
                remove_at(dfd, name)
                continue
            st = lstat_at(dfd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                try:
                    cfd = open_dir_at(dfd, name)
                except UnsafePath:
                    continue
                try:
                    self._prune_opaque(cfd, key, state)
                finally:
                    os.close(cfd)


def _set_mtime(target: int | tuple[int, str], mtime: float) -> None:
    """Set atime and mtime on an fd, or on (dir_fd, name) without following a link."""
    # Timestamps are cosmetic: a hostile or odd value (negative, year 30000) must not fail the unpack.
    try:
        if isinstance(target, int):
            os.utime(target, (mtime, mtime))
        else:
            os.utime(target[1], (mtime, mtime), dir_fd=target[0], follow_symlinks=False)
    except (OSError, OverflowError, ValueError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (zlib.error, EOFError, gzip.BadGzipFile,
                                                       zstandard.ZstdError)


# ---------------------------------------------------------------------------------------------------
# After the last layer: the mount points and files the sandbox binds onto
#
# bwrap and podman mount over these paths while the host's root is still reachable from the mount
# namespace (bwrap's /oldroot), so a link there would make them create or mount onto a host path. Each
# one (and each directory above it) is made a plain directory or regular file of the rootfs, by us.

# Mounted over by the sandbox (bwrap --proc/--dev/--tmpfs, podman): must be real directories.
MOUNT_DIRS = ("proc", "dev", "sys", "tmp")
# Bound over (the results socket, the binary message; /etc/* by podman and bwrap --share-net): regular
# files. A regular file already there is kept (/etc/hosts of the image is used as is by bwrap).
MOUNT_FILES = ("_abaco_binary_data", "_abaco_results.sock", "etc/hosts", "etc/hostname", "etc/resolv.conf")
# Created when missing, left alone otherwise (nothing is mounted there).
OPTIONAL_DIRS = ("run",)


def prepare_rootfs(root: Path, working_dir: str = "") -> None:
    """Make the mount points, bind targets and WorkingDir, replacing whatever else stands there.

    Never follows a link: the tree is walked with safepath. The WorkingDir's parents become real
    directories (bwrap may create it with --dir); the WorkingDir itself may stay a link, since the
    sandbox only chdirs there after its root is in place.
    """
    try:
        wd = split_name(working_dir) if working_dir else []
    except ImageError:
        raise ImageError(f"the image's WorkingDir {working_dir!r} contains '..'; refusing this image") from None
    rfd = open_root(root)
    try:
        for name in MOUNT_DIRS:
            _ensure_plain(rfd, name.split("/"), directory=True, mode=0o1777 if name == "tmp" else 0o755)
        for name in MOUNT_FILES:
            _ensure_plain(rfd, name.split("/"), directory=False, mode=0o644)
        for name in OPTIONAL_DIRS:
            if lstat_at(rfd, name) is None:
                _ensure_plain(rfd, [name], directory=True, mode=0o755)
        if wd:
            pfd = _plain_dirs(rfd, wd[:-1])
            try:
                st = lstat_at(pfd, wd[-1])
                if st is None:
                    _make(pfd, wd[-1], directory=True, mode=0o755)
            finally:
                os.close(pfd)
        # The tree is bound read-only as / and the sandbox may run as another uid than the store's owner.
        os.fchmod(rfd, stat.S_IMODE(os.fstat(rfd).st_mode) | 0o755)
    finally:
        os.close(rfd)


def _plain_dirs(root_fd: int, parts: list[str]) -> int:
    """Open root/parts as real directories, replacing any link or non-directory on the way by a new one."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            st = lstat_at(fd, name)
            if st is None or not stat.S_ISDIR(st.st_mode):
                if st is not None:
                    remove_at(fd, name)
                _make(fd, name, directory=True, mode=0o755)
            nfd = open_dir_at(fd, name)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _ensure_plain(root_fd: int, parts: list[str], *, directory: bool, mode: int) -> None:
    pfd = _plain_dirs(root_fd, parts[:-1])
    try:
        name = parts[-1]
        st = lstat_at(pfd, name)
        if st is not None:
            if stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode):
                return
            remove_at(pfd, name)
        _make(pfd, name, directory=directory, mode=mode)
    finally:
        os.close(pfd)


def _make(dir_fd: int, name: str, *, directory: bool, mode: int) -> None:
    if directory:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        fd = open_dir_at(dir_fd, name)
    else:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # not left to the umask
    finally:
        os.close(fd)


def tree_size(root: Path) -> tuple[int, int]:
    """(bytes, entries) of a tree, not following symlinks; hard-linked inodes counted once."""
    total = entries = 0
    seen: set[tuple[int, int]] = set()
    try:
        rfd = open_root(root)
    except FileNotFoundError:
        return 0, 0
    try:
        for _fd, _name, st in walk_tree(rfd):
            entries += 1
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    finally:
        os.close(rfd)
    return total, entries


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Change the owner of every entry of a tree (needs root); never follows symlinks (fchownat)."""
    rfd = open_root(root)
    try:
        os.fchown(rfd, uid, gid)
        for fd, name, _st in walk_tree(rfd):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(rfd)
