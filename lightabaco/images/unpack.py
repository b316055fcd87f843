"""The safe layer unpacker: applies OCI layer tars onto one flattened rootfs directory.

Threats handled (sandbox-notes §4, §9): path traversal (`..` is refused; absolute names are taken
relative to the rootfs), symlink escapes (every parent is resolved with chroot semantics by
`secure_resolve`, so a symlink planted by a lower layer can never lead outside), hard links to host files
(the target must already exist inside the rootfs), whiteouts pointing outside, device nodes (skipped),
setuid/setgid bits (dropped), and zip bombs (limits on bytes, entries, path depth and length).
Nothing here calls tarfile's extract(): each member is created by hand with O_NOFOLLOW|O_EXCL.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import zstandard

from lightabaco.sandbox.errors import ImageError
from lightabaco.sandbox.fsutil import force_rmtree

# Bump when the unpacked tree would differ for the same image (the store keys rootfs dirs by it).
UNPACKER_VERSION = 1
MAX_SYMLINKS = 40
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

Progress = Callable[[str, int, "int | None", str], None]


@dataclass
class UnpackLimits:
    """Caps that protect the host from hostile or broken images."""

    max_bytes: int = 32 << 30  # total file data written
    max_entries: int = 2_000_000  # tar members over all layers
    max_depth: int = 256  # path components of one member name
    max_path: int = 4096  # characters of one member name


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


def secure_resolve(root: Path, parts: list[str], *, create: bool = False, dir_modes: dict[str, int] | None = None
                   ) -> Path:
    """Resolve `parts` (a directory path inside the image) to a real host directory under `root`.

    Symlinks met on the way are followed with chroot semantics: an absolute target restarts at `root`,
    `..` stops at `root`, at most MAX_SYMLINKS links. With `create`, missing directories are made
    (0700 for now; `dir_modes` records 0755 for them). Returns a path made only of real directories, so
    callers can use it with O_NOFOLLOW safely. Raises ImageError when a component is not a directory.
    """
    root_s = os.fspath(root)
    resolved: list[str] = []
    todo = list(reversed(parts))
    links = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        cur = os.path.join(root_s, *resolved, comp)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                raise ImageError(f"path /{'/'.join(resolved + [comp])} does not exist in the image") from None
            os.mkdir(cur, 0o700)
            if dir_modes is not None:
                dir_modes[cur] = 0o755
            resolved.append(comp)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise ImageError(f"too many levels of symbolic links resolving /{'/'.join(parts)} in the image")
            target = os.readlink(cur)
            if target.startswith("/"):
                resolved = []
            todo.extend(reversed(target.split("/")))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ImageError(f"/{'/'.join(resolved + [comp])} is not a directory in the image but a layer "
                             f"puts entries under it (resolving /{'/'.join(parts)})")
        resolved.append(comp)
    return Path(root_s, *resolved)


def _remove(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        force_rmtree(path)
    else:
        os.unlink(path)


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


class Unpacker:
    """Applies layers in order onto `root` (an empty directory), then fixes directory modes."""

    def __init__(self, root: Path, limits: UnpackLimits | None = None, progress: Progress | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or UnpackLimits()
        self.progress = progress
        self.stats = UnpackStats()
        # Final modes of directories, applied after all layers (deepest first), so that a 0555 dir from
        # a lower layer can still receive files from upper layers.
        self.dir_modes: dict[str, int] = {}
        self.dir_mtimes: dict[str, float] = {}
        self.layer_digests: list[str] = []  # compressed digests as read (docker-archive has none to check)
        self.layer_sizes: list[int] = []

    # -- public

    def apply(self, layers: Iterable[LayerSource]) -> UnpackStats:
        layers = list(layers)
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
        self.finish_modes()
        return self.stats

    def finish_modes(self) -> None:
        # Deepest first, so chmod of a parent never blocks access to a child we still need to touch.
        for path in sorted(self.dir_modes, key=lambda p: p.count("/"), reverse=True):
            try:
                os.chmod(path, (self.dir_modes[path] & 0o1777) | 0o700)
                if path in self.dir_mtimes:
                    _set_mtime(path, self.dir_mtimes[path])
            except FileNotFoundError:
                pass  # removed by a later whiteout
        self.dir_modes.clear()

    # -- per layer

    def _apply_tar(self, stream: HashingReader, detail: str) -> None:
        state = _LayerState()
        try:
            tf = tarfile.open(fileobj=stream, mode="r|")  # type: ignore[call-overload]
        except tarfile.TarError as e:
            raise ImageError(f"{detail} is not a tar archive ({e}); the image is malformed") from None
        except _DECOMPRESS_ERRORS as e:
            raise ImageError(f"{detail}: cannot decompress ({e}); the blob is corrupt, import it again") from None
        try:
            for member in tf:
                self.stats.entries += 1
                if self.stats.entries > self.limits.max_entries:
                    raise ImageError(f"the image has more than {self.limits.max_entries} layer entries; "
                                     "refusing to unpack (raise the store's max_entries limit if it is legitimate)")
                self._apply_member(tf, member, state, detail)
        except tarfile.TarError as e:
            raise ImageError(f"{detail}: broken tar stream ({e}); the image is malformed, import it again") from None
        except _DECOMPRESS_ERRORS as e:
            raise ImageError(f"{detail}: cannot decompress ({e}); the blob is corrupt, import it again") from None

    def _apply_member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, state: _LayerState, detail: str) -> None:
        parts = split_name(m.name, self.limits)
        if not parts:
            if m.isdir():  # "./" entry: the root directory's own mode
                self.dir_modes[os.fspath(self.root)] = m.mode
            return
        base = parts[-1]
        pkey = tuple(parts[:-1])
        if any(p.startswith(WHITEOUT + WHITEOUT) for p in pkey):
            return  # inside aufs metadata dirs (.wh..wh.plnk/...): not part of the image
        if base.startswith(WHITEOUT):
            self.stats.whiteouts += 1
            try:
                parent = secure_resolve(self.root, parts[:-1], create=False)
            except ImageError:
                return  # hides something in a directory that does not exist: nothing to do
            if base == OPAQUE:
                self._prune_opaque(os.fspath(parent), pkey, state)
            elif base.startswith(WHITEOUT + WHITEOUT):
                pass  # aufs metadata (.wh..wh.plnk and friends): not part of the image
            else:
                name = base[len(WHITEOUT):]
                if not name or name in (".", ".."):
                    raise ImageError(f"{detail}: whiteout entry {m.name!r} names no file; the image is malformed")
                if pkey + (name,) not in state.added:
                    target = os.path.join(parent, name)
                    if os.path.lexists(target):
                        _remove(target)
            return
        try:
            parent = secure_resolve(self.root, parts[:-1], create=True, dir_modes=self.dir_modes)
        except ImageError as e:
            raise ImageError(f"{detail}: entry {m.name!r}: {e}") from None
        path = os.path.join(parent, base)
        key = tuple(parts)
        if m.islnk():
            self._hardlink(m, path, detail)
            state.added.add(key)
            return
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if m.isdir() and stat.S_ISDIR(existing.st_mode):
                self.dir_modes[path] = m.mode
                self.dir_mtimes[path] = m.mtime
                state.added.add(key)
                return
            _remove(path)  # never write through what was there (it may be a symlink)
        if m.isdir():
            os.mkdir(path, 0o700)
            self.dir_modes[path] = m.mode
            self.dir_mtimes[path] = m.mtime
            self.stats.dirs += 1
        elif m.isreg():
            self._regular(tf, m, path)
        elif m.issym():
            os.symlink(m.linkname, path)
            self.stats.symlinks += 1
            _set_mtime(path, m.mtime)
        elif m.isfifo():
            os.mkfifo(path, 0o600)
            os.chmod(path, m.mode & 0o777)
            self.stats.fifos += 1
        elif m.ischr() or m.isblk():
            self.stats.devices_skipped += 1  # the sandbox gets its own /dev
            return
        else:
            return  # unknown types (e.g. sparse metadata tarfile already folded) are ignored
        state.added.add(key)

    def _regular(self, tf: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> None:
        if self.stats.bytes + m.size > self.limits.max_bytes:
            raise ImageError(f"the image unpacks to more than {self.limits.max_bytes} bytes (at {m.name!r}); "
                             "refusing (raise the store's max_bytes limit if it is legitimate)")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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
        self.stats.bytes += m.size

    def _hardlink(self, m: tarfile.TarInfo, path: str, detail: str) -> None:
        tparts = split_name(m.linkname, self.limits)
        if not tparts:
            raise ImageError(f"{detail}: hard link {m.name!r} has an empty target")
        try:
            tparent = secure_resolve(self.root, tparts[:-1], create=False)
        except ImageError as e:
            raise ImageError(f"{detail}: hard link {m.name!r} -> {m.linkname!r}: target not in the image ({e})"
                             ) from None
        src = os.path.join(tparent, tparts[-1])
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise ImageError(f"{detail}: hard link {m.name!r} -> {m.linkname!r}: the target does not exist in "
                             "the image; the layer is malformed or hostile") from None
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"{detail}: hard link {m.name!r} -> {m.linkname!r} points to a directory")
        if src == path:
            return
        if os.path.lexists(path):
            _remove(path)
        try:
            os.link(src, path, follow_symlinks=False)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(src, path, follow_symlinks=False)
        self.stats.hardlinks += 1

    def _prune_opaque(self, dirpath: str, dkey: tuple[str, ...], state: _LayerState) -> None:
        """Remove what lower layers put under dirpath; keep what this layer added (at any depth)."""
        try:
            names = os.listdir(dirpath)
        except FileNotFoundError:
            return
        for name in names:
            key = dkey + (name,)
            child = os.path.join(dirpath, name)
            if key not in state.added:
                _remove(child)
            elif stat.S_ISDIR(os.lstat(child).st_mode):
                self._prune_opaque(child, key, state)


def _set_mtime(path_or_fd: str | int, mtime: float) -> None:
    # Timestamps are cosmetic: a hostile or odd value (negative, year 30000) must not fail the unpack.
    try:
        if isinstance(path_or_fd, int):
            os.utime(path_or_fd, (mtime, mtime))
        else:
            os.utime(path_or_fd, (mtime, mtime), follow_symlinks=False)
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


PREPARE_DIRS = ("proc", "dev", "sys", "tmp", "run")
PREPARE_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf", "_abaco_binary_data", "_abaco_results.sock")


def prepare_rootfs(root: Path, working_dir: str = "") -> None:
    """Create mount points and bind targets that are missing; never through symlinks out of the rootfs.

    Existing entries (of any type) are left alone. The image's WorkingDir is created too, since
    builders often leave it out of every layer.
    """
    modes: dict[str, int] = {}
    try:
        wd = split_name(working_dir) if working_dir else []
    except ImageError:
        raise ImageError(f"the image's WorkingDir {working_dir!r} contains '..'; refusing this image") from None
    for rel in (*([p] for p in PREPARE_DIRS), wd):
        if not rel:
            continue
        try:
            parent = secure_resolve(root, rel[:-1], create=True, dir_modes=modes)
        except ImageError:
            continue  # a file where a directory should be: leave it, the runner reports it
        path = os.path.join(parent, rel[-1])
        if not os.path.lexists(path):
            os.mkdir(path, 0o755)
            modes[path] = 0o1777 if rel == ["tmp"] else 0o755
    for rel_s in PREPARE_FILES:
        rel = rel_s.split("/")
        try:
            parent = secure_resolve(root, rel[:-1], create=True, dir_modes=modes)
        except ImageError:
            continue
        path = os.path.join(parent, rel[-1])
        if os.path.lexists(path):
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)
    for path in sorted(modes, key=lambda p: p.count("/"), reverse=True):
        os.chmod(path, modes[path])
    # The tree is bound read-only as / and the sandbox may run as another uid than the store's owner.
    os.chmod(root, (os.stat(root).st_mode & 0o7777) | 0o755)


def tree_size(root: Path) -> tuple[int, int]:
    """(bytes, entries) of a tree, not following symlinks; hard-linked inodes counted once."""
    total = entries = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            entries += 1
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total, entries


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """lchown every entry of a tree (needs root); never follows symlinks."""
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
