"""The image store: content-addressed blobs, named references, and one unpacked rootfs per image ID.

Layout under the store root (sandbox-notes §10.2):

    blobs/sha256/<hex>              manifests, configs and layers, verified before they get their name
    blobs/partial/<hex>             interrupted downloads, resumed by the next pull
    rootfs/<config-hex>.v<N>/       one per image ID (config digest) and unpacker version N:
        rootfs/                     the flattened tree, bound read-only as / by the sandbox
        config.json  meta.json      the image config; what was unpacked, how big, when
    refs.json                       {"docker.io/library/busybox:latest": {"config": ..., "manifest": ...}}
    tmp/<id>/ + tmp/<id>.lock       staging dirs, renamed into rootfs/ when complete (atomic)
    locks/                          fcntl.flock files: refs, store-wide gc, one per unpack and per blob

Several processes may use one store at once: unpacks of one image are serialised by a per-image lock
(the second process finds the first one's result), refs.json is rewritten under a lock and replaced
atomically, and gc/rm take the store lock exclusively while imports and pulls hold it shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from lightabaco.sandbox.errors import ImageError, ImageNotFound
from lightabaco.sandbox.types import ImageConfig, PreparedImage
from . import oci
from .reference import is_image_id, parse_reference
from .unpack import (UNPACKER_VERSION, Budget, LayerSource, Unpacker, UnpackLimits, UnpackQuotaError,
                     chown_tree, force_rmtree, prepare_rootfs, tree_size)

Progress = Callable[[str, int, "int | None", str], None]
STALE_TMP_S = 60.0  # staging dirs older than this whose lock is free belong to a crashed process


@dataclass
class StoreQuota:
    """Caps on all unpacked images of one store together (None or 0: unlimited)."""

    max_bytes: int | None = None  # LIGHTABACO_IMAGES_MAX_BYTES
    max_inodes: int | None = None  # LIGHTABACO_IMAGES_MAX_INODES


@dataclass
class _Resolved:
    config_digest: str
    reference: str
    entry: dict[str, Any] | None


class _TeeReader:
    """Passes a blob stream through to the unpacker while saving a copy (so import reads once)."""

    def __init__(self, raw: BinaryIO, copy_path: Path) -> None:
        self.raw = raw
        self.out = open(copy_path, "wb")

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.out.write(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.out.close()
        self.raw.close()

    def __enter__(self) -> "_TeeReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")


class ImageStore:
    """Images on local disk, ready to run. See the module docstring for the layout and locking."""

    def __init__(self, root: Path | str, *, limits: UnpackLimits | None = None,
                 insecure_registries: tuple[str, ...] = (), rootfs_owner: tuple[int, int] | None = None,
                 quota: StoreQuota | None = None) -> None:
        """Open (creating if needed) the store at `root`.

        `limits`: per-image caps on what one unpack may write; `quota`: caps on all unpacked images of
        the store together (both checked as each layer entry arrives).

        `insecure_registries`: registry hosts that may be pulled over plain http (loopback ones always may).
        `rootfs_owner`: (uid, gid) to own unpacked trees when the store runs as root but sandboxes run as
        that unprivileged user (then the sandbox sees its image files as its own, as in rootless mode).
        """
        self.root = Path(root)
        self.limits = limits or UnpackLimits()
        self.quota = quota or StoreQuota()
        self.insecure_registries = tuple(insecure_registries)
        self.rootfs_owner = rootfs_owner if os.geteuid() == 0 else None
        for d, mode in ((self.root, 0o711), (self.root / "blobs", 0o700), (self.root / "blobs" / "sha256", 0o700),
                        (self.root / "blobs" / "partial", 0o700), (self.root / "rootfs", 0o711),
                        (self.root / "tmp", 0o700), (self.root / "locks", 0o700)):
            d.mkdir(parents=True, exist_ok=True)
            # The sandbox may run as another unprivileged uid: it must traverse (not list) to the rootfs.
            if stat.S_IMODE(d.stat().st_mode) != mode:
                d.chmod(mode)
        self._config_cache: dict[str, tuple[dict[str, Any], ImageConfig]] = {}
        self._clean_stale_tmp()

    # ---------------------------------------------------------------------------------------------
    # Paths and locks

    def _rootfs_dir(self, config_digest: str) -> Path:
        return self.root / "rootfs" / f"{config_digest.split(':', 1)[1]}.v{UNPACKER_VERSION}"

    def _blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / oci.check_digest(digest, "blob").split(":", 1)[1]

    def _partial_path(self, digest: str) -> Path:
        return self.root / "blobs" / "partial" / digest.split(":", 1)[1]

    @contextlib.contextmanager
    def _lock(self, name: str, shared: bool = False) -> Iterator[None]:
        fd = os.open(self.root / "locks" / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh dir under tmp/, locked while in use and removed unless the caller renamed it away."""
        name = uuid.uuid4().hex
        lock_path = self.root / "tmp" / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self.root / "tmp" / name
        path.mkdir(mode=0o700)
        try:
            yield path
        finally:
            if os.path.lexists(path):
                force_rmtree(path)
            os.unlink(lock_path)
            os.close(fd)

    def _clean_stale_tmp(self) -> None:
        tmp = self.root / "tmp"
        now = time.time()
        for entry in os.listdir(tmp):
            path = tmp / entry
            try:
                if now - path.lstat().st_mtime < STALE_TMP_S:
                    continue
            except FileNotFoundError:
                continue
            if entry.endswith(".lock"):
                stage = tmp / entry[:-5]
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # a live process is still staging there
                try:
                    force_rmtree(stage)
                    os.unlink(path)
                finally:
                    os.close(fd)
            elif not os.path.lexists(str(path) + ".lock"):
                force_rmtree(path)

    # ---------------------------------------------------------------------------------------------
    # refs.json

    def _read_refs(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.root / "refs.json").read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise ImageError(f"{self.root / 'refs.json'} is corrupt ({e}); fix or delete it and re-import "
                             "the images") from None
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _edit_refs(self) -> Iterator[dict[str, dict[str, Any]]]:
        with self._lock("refs"):
            refs = self._read_refs()
            yield refs
            tmp = self.root / "tmp" / f"refs-{uuid.uuid4().hex}.json"
            tmp.write_text(json.dumps(refs, indent=1, sort_keys=True))
            os.replace(tmp, self.root / "refs.json")

    def _find_ref(self, refs: dict[str, dict[str, Any]], ref: str) -> tuple[str, dict[str, Any]] | None:
        r = parse_reference(ref)
        key = str(r)
        if key in refs:
            return key, refs[key]
        if r.digest:
            # name@digest, or name:tag@digest: any ref of that repository pulled with that digest
            for k, e in sorted(refs.items()):
                if parse_reference(k).name == r.name and r.digest in (e.get("digests") or []):
                    return k, e
        return None

    # ---------------------------------------------------------------------------------------------
    # Lookups

    def _resolve(self, ref: str) -> _Resolved:
        refs = self._read_refs()
        if is_image_id(ref):
            hexp = ref.strip().removeprefix("sha256:")
            matches = sorted({e["config"] for e in refs.values() if e["config"][7:].startswith(hexp)}
                             | {"sha256:" + d.split(".")[0] for d in os.listdir(self.root / "rootfs")
                                if d.startswith(hexp)})
            if len(matches) == 1:
                owner = sorted(k for k, e in refs.items() if e["config"] == matches[0])
                return _Resolved(matches[0], owner[0] if owner else "", refs.get(owner[0]) if owner else None)
            if len(matches) > 1:
                raise ImageError(f"image ID prefix {ref!r} matches {len(matches)} images; give more digits")
            if ref.startswith("sha256:"):
                raise ImageNotFound(f"no image with ID {ref} in the local store; `lightabaco images list` shows "
                                    "what is there")
        found = self._find_ref(refs, ref)
        if found is None:
            norm = str(parse_reference(ref))
            raise ImageNotFound(f"image {norm} is not in the local store; run `lightabaco images pull {ref}` "
                                f"(or `lightabaco images import PATH --tag {ref}`)")
        key, entry = found
        return _Resolved(entry["config"], key, entry)

    def get(self, ref: str) -> PreparedImage:
        """The local image named `ref` (a reference, `sha256:<id>` or an ID prefix), ready to run."""
        res = self._resolve(ref)
        rdir = self._rootfs_dir(res.config_digest)
        if not (rdir / "meta.json").exists():
            self._rebuild(res)
        return self._prepared(res.config_digest, res.reference)

    def _prepared(self, config_digest: str, reference: str) -> PreparedImage:
        rdir = self._rootfs_dir(config_digest)
        cached = self._config_cache.get(config_digest)
        if cached is None:
            try:
                raw = json.loads((rdir / "config.json").read_bytes())
            except FileNotFoundError:
                raise ImageNotFound(f"image {reference or config_digest} lost its unpacked files (removed by "
                                    "gc?); pull or import it again") from None
            cached = (raw, oci.parse_image_config(raw))
            self._config_cache[config_digest] = cached
        raw, cfg = cached
        return PreparedImage(config_digest=config_digest, rootfs=rdir / "rootfs", config=cfg,
                             reference=reference, architecture=str(raw.get("architecture") or ""),
                             os=str(raw.get("os") or ""))

    def _rebuild(self, res: _Resolved) -> None:
        """Unpack again from stored blobs (after an unpacker upgrade or a lost rootfs)."""
        entry = res.entry or {}
        mdigest = entry.get("manifest")
        if not mdigest or not self._blob_path(mdigest).exists():
            raise ImageNotFound(f"image {res.reference or res.config_digest} has no unpacked files and its "
                                "layers are not stored; pull or import it again")
        manifest = oci.load_json(self._blob_path(mdigest).read_bytes(), f"stored manifest {mdigest}")
        cbytes = self._read_blob(res.config_digest)
        config = oci.load_json(cbytes, "stored config")
        diff_ids = oci.diff_ids_of(config)
        lds = oci.layers_of(manifest, f"stored manifest {mdigest}")
        if len(diff_ids) != len(lds):
            raise ImageError(f"stored manifest {mdigest} does not match its config; pull or import it again")
        layers = []
        for ld, diff_id in zip(lds, diff_ids, strict=True):
            p = self._blob_path(ld["digest"])
            if not p.exists():
                raise ImageNotFound(f"image {res.reference}: layer {ld['digest']} is not stored; pull or import "
                                    "it again")
            layers.append(LayerSource(open=_file_opener(p), digest=ld["digest"], diff_id=diff_id,
                                      size=ld.get("size")))
        with self._lock("store", shared=True):
            self._materialize(res.config_digest, cbytes, config, lambda _stage: layers, None)

    def _read_blob(self, digest: str) -> bytes:
        try:
            data = self._blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(f"blob {digest} is not in the store; pull or import the image again") from None
        if oci.sha256_digest(data) != digest:
            raise ImageError(f"stored blob {digest} is corrupt; remove the image and pull or import it again")
        return data

    # ---------------------------------------------------------------------------------------------
    # Read-only access for the image distribution endpoint (lightabaco/http/registry_api.py): what a
    # worker host pulls from the API server. Only named images' manifests are served; blobs by digest.

    def manifest_for(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of the manifest named `repository:reference` (a tag) or of a stored
        manifest or index with digest `reference` that some name points to. Raises ImageNotFound."""
        refs = self._read_refs()
        if reference.startswith("sha256:"):
            digest = oci.check_digest(reference, "manifest")
            known = {d for e in refs.values() for d in [e.get("manifest"), *(e.get("digests") or [])] if d}
            if digest not in known:
                raise ImageNotFound(f"no stored manifest {digest}; pull by a digest the server lists "
                                    "(`lightabaco images list`)")
        else:
            found = self._find_ref(refs, f"{repository}:{reference}")
            if found is None or not found[1].get("manifest"):
                raise ImageNotFound(f"image {repository}:{reference} is not in the server's store (or was "
                                    "imported without a manifest); check the name with `lightabaco images list`")
            digest = found[1]["manifest"]
        data = self._read_blob(digest)
        mtype = ""
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(data)
            mtype = doc.get("mediaType") or ("application/vnd.oci.image.index.v1+json" if "manifests" in doc
                                             else "application/vnd.oci.image.manifest.v1+json")
        return data, mtype or "application/vnd.oci.image.manifest.v1+json", digest

    def open_blob(self, digest: str) -> tuple[BinaryIO, int]:
        """A stored blob opened for reading (never through a symlink) and its size; ImageNotFound if absent.
        The reader verifies the digest (the distribution client does); gc may unlink it meanwhile, the
        open file stays readable."""
        path = self._blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, OSError):
            raise ImageNotFound(f"blob {digest} is not in the server's store") from None
        f = os.fdopen(fd, "rb")
        return f, os.fstat(fd).st_size

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).exists()

    def _write_blob(self, digest: str, data: bytes) -> None:
        if oci.sha256_digest(data) != digest:
            raise ImageError(f"blob does not match its digest {digest}; refusing to store it")
        path = self._blob_path(digest)
        if path.exists():
            return
        tmp = self.root / "tmp" / f"blob-{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        os.replace(tmp, path)

    # ---------------------------------------------------------------------------------------------
    # Unpacking into rootfs/

    def _materialize(self, config_digest: str, config_bytes: bytes, config: dict[str, Any],
                     layers: Callable[[Path], list[LayerSource]], progress: Progress | None,
                     on_unpacked: Callable[[Path, Unpacker], None] | None = None) -> bool:
        """Unpack into rootfs/<config>.vN unless it is already there; True if this call unpacked it.

        `layers(stage)` builds the layer sources (they may keep copies in the staging dir);
        `on_unpacked(stage, unpacker)` runs after a verified unpack, before the atomic rename.
        The caller holds the store lock (shared).
        """
        final = self._rootfs_dir(config_digest)
        if (final / "meta.json").exists():
            return False
        with self._lock("unpack-" + config_digest.split(":", 1)[1]):
            if (final / "meta.json").exists():
                return False  # another process unpacked it while we waited
            self._drop_stale_versions(config_digest)
            budget = self._budget()  # refuses here, before anything is written, when the store is full
            with self._staging() as stage:
                root = stage / "rootfs"
                root.mkdir(mode=0o755)
                unpacker = Unpacker(root, self.limits, progress, budget)
                try:
                    stats = unpacker.apply(layers(stage))
                    cfg = oci.parse_image_config(config)
                    prepare_rootfs(root, cfg.working_dir)
                    if self.rootfs_owner:
                        chown_tree(root, *self.rootfs_owner)
                    size, entries = stats.bytes, stats.entries  # no second walk over a big tree
                except OSError as e:
                    raise ImageError(f"unpacking image {config_digest[:19]} failed: {e}; check free space and "
                                     f"permissions under {self.root}") from e
                if on_unpacked:
                    on_unpacked(stage, unpacker)
                (stage / "config.json").write_bytes(config_bytes)
                meta = {"unpacker": UNPACKER_VERSION, "config": config_digest,
                        "diff_ids": oci.diff_ids_of(config),
                        "layers": unpacker.layer_digests, "bytes": size, "entries": entries,
                        "inodes": stats.inodes,
                        "stats": stats.as_dict(), "unpacked": time.time()}
                (stage / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: marks complete
                stage.chmod(0o711)
                if os.path.lexists(final):
                    force_rmtree(final)  # an incomplete leftover
                os.rename(stage, final)
                return True

    def _drop_stale_versions(self, config_digest: str) -> None:
        """Remove this image's trees made by other unpacker versions: never used again, they only hold space
        (and count toward the quota). Called under the image's unpack lock."""
        hexd = config_digest.split(":", 1)[1]
        current = self._rootfs_dir(config_digest).name
        for d in os.listdir(self.root / "rootfs"):
            if d.startswith(hexd + ".") and d != current:
                force_rmtree(self.root / "rootfs" / d)

    def usage(self) -> tuple[int, int, int]:
        """(unpacked bytes, inodes, images) of every tree in rootfs/, from their meta.json."""
        total_bytes = total_inodes = images = 0
        for d in os.listdir(self.root / "rootfs"):
            try:
                meta = json.loads((self.root / "rootfs" / d / "meta.json").read_text())
            except (FileNotFoundError, NotADirectoryError, ValueError):
                continue
            if not isinstance(meta, dict):
                continue
            images += 1
            total_bytes += int(meta.get("bytes") or 0)
            total_inodes += int(meta.get("inodes") or meta.get("entries") or 0)
        return total_bytes, total_inodes, images

    def _budget(self) -> Budget | None:
        """What the store's quota leaves for one more unpack; UnpackQuotaError when nothing is left."""
        max_bytes, max_inodes = self.quota.max_bytes or None, self.quota.max_inodes or None
        if max_bytes is None and max_inodes is None:
            return None
        used_bytes, used_inodes, images = self.usage()

        def explain(kind: str) -> str:
            limit, used, setting, unit = ((max_bytes, used_bytes, "LIGHTABACO_IMAGES_MAX_BYTES", "bytes")
                                          if kind == "bytes" else
                                          (max_inodes, used_inodes, "LIGHTABACO_IMAGES_MAX_INODES",
                                           "files, directories and links"))
            return (f"the image store in {self.root} has a quota of {limit} unpacked {unit} ({setting}); "
                    f"{used} are used by {images} image(s) and this image needs more. Free space with "
                    f"`lightabaco images rm IMAGE` (`lightabaco images list` shows them), or ask the "
                    f"operator to raise {setting}")

        if max_bytes is not None and used_bytes >= max_bytes:
            raise UnpackQuotaError(explain("bytes"))
        if max_inodes is not None and used_inodes >= max_inodes:
            raise UnpackQuotaError(explain("inodes"))
        return Budget(bytes_left=None if max_bytes is None else max_bytes - used_bytes,
                      inodes_left=None if max_inodes is None else max_inodes - used_inodes, explain=explain)

    # ---------------------------------------------------------------------------------------------
    # Import

    def import_path(self, path: Path | str, tag: str | None = None,
                    progress: Progress | None = None) -> list[PreparedImage]:
        """Import every image in an OCI layout dir, oci-archive or docker-archive; returns them.

        Names come from the layout's annotations or the archive's RepoTags; `tag` overrides them (and
        is required when the source names nothing, or the image is only reachable by its ID).
        """
        path = Path(path)
        if tag is not None:
            tag = str(parse_reference(tag))
        out: list[PreparedImage] = []
        with self._lock("store", shared=True), oci.ImageSource(path) as src:
            images = src.images()
            if tag and len(images) > 1:
                raise ImageError(f"{path} holds {len(images)} images; --tag can name only one. Import without "
                                 "--tag (names come from the archive) or save one image per archive")
            for n, img in enumerate(images):
                where = f"{path} ({img.names[0] if img.names else img.config_digest[:19]})"
                oci.check_config_platform(img.config, where)
                names = [tag] if tag else oci.usable_names(img.names)
                if progress:
                    progress("import", n, len(images), where)
                mdigest = self._import_one(src, img, progress)
                now = time.time()
                with self._edit_refs() as refs:
                    if mdigest is None:
                        # docker-archive of an image unpacked before: keep the manifest we already hold
                        mdigest = next((e["manifest"] for e in refs.values()
                                        if e["config"] == img.config_digest and e.get("manifest")), None)
                    for name in names:
                        refs[name] = {"config": img.config_digest, "manifest": mdigest,
                                      "digests": [mdigest] if mdigest else [], "source": "import:" + str(path),
                                      "added": now}
                out.append(self._prepared(img.config_digest, names[0] if names else ""))
            if progress:
                progress("import", len(images), len(images), str(path))
        return out

    def _import_one(self, src: oci.ImageSource, img: oci.SourceImage, progress: Progress | None) -> str | None:
        """Store the image's blobs and unpack it, reading each layer once. Returns the manifest digest."""
        self._write_blob(img.config_digest, img.config_bytes)
        if img.manifest_bytes is not None and img.manifest_digest:
            self._write_blob(img.manifest_digest, img.manifest_bytes)
        manifest_digest = img.manifest_digest

        def layers(stage: Path) -> list[LayerSource]:
            def opener(i: int, lr: oci.LayerRef) -> Callable[[], BinaryIO]:
                def open_() -> BinaryIO:
                    if lr.digest and self.has_blob(lr.digest):
                        return src.open_layer(lr)
                    return _TeeReader(src.open_layer(lr), stage / f"layer-{i}")  # type: ignore[return-value]
                return open_
            return [LayerSource(open=opener(i, lr), digest=lr.digest, diff_id=lr.diff_id, size=lr.size)
                    for i, lr in enumerate(img.layers)]

        def commit(stage: Path, unpacker: Unpacker) -> None:
            nonlocal manifest_digest
            for i, digest in enumerate(unpacker.layer_digests):
                copy = stage / f"layer-{i}"
                if copy.exists() and not self._blob_path(digest).exists():
                    os.replace(copy, self._blob_path(digest))
            if manifest_digest is None:  # docker-archive: describe the layers we now hold
                held = zip(unpacker.layer_digests, unpacker.layer_sizes, strict=True)
                mbytes = oci.synthesize_manifest(img.config_digest, len(img.config_bytes),
                                                 [(d, n, oci.OCI_LAYER_TAR) for d, n in held])
                manifest_digest = oci.sha256_digest(mbytes)
                self._write_blob(manifest_digest, mbytes)

        unpacked = self._materialize(img.config_digest, img.config_bytes, img.config, layers, progress, commit)
        if not unpacked and manifest_digest is not None:
            # The tree was already there (another format of this image): still keep this manifest's layers,
            # so the ref can be unpacked again later and gc keeps what it needs.
            for lr in img.layers:
                if lr.digest and not self.has_blob(lr.digest):
                    self._copy_blob(src.open_layer(lr), lr.digest)
        return manifest_digest

    def _copy_blob(self, stream: BinaryIO, digest: str) -> None:
        tmp = self.root / "tmp" / f"blob-{uuid.uuid4().hex}"
        h = hashlib.sha256()
        try:
            with stream, open(tmp, "wb") as out:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            if "sha256:" + h.hexdigest() != digest:
                raise ImageError(f"layer blob {digest} does not match its digest; the image is corrupt")
            os.replace(tmp, self._blob_path(digest))
        finally:
            tmp.unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------------
    # Pull

    def pull(self, ref: str, *, username: str | None = None, password: str | None = None,
             insecure: bool = False, progress: Progress | None = None, client: Any = None,
             save_as: str | None = None) -> PreparedImage:
        """Pull `ref` from its registry (distribution API v2), unpack it, and name it `ref` (or `save_as`).

        `client`: a RegistryClient already set up for `ref` (pull_from_api gives one for the API server)."""
        from .registry import RegistryClient  # registry code is only needed for pulls

        r = parse_reference(ref)
        insecure = insecure or r.registry in self.insecure_registries
        if client is None:
            client = RegistryClient(r, username=username, password=password, insecure=insecure)
        with self._lock("store", shared=True):
            mbytes, mtype, top_digest = client.get_manifest(r.api_reference)
            digests = [top_digest]
            manifest = oci.load_json(mbytes, f"manifest of {r}")
            mtype = manifest.get("mediaType") or mtype
            if mtype in oci.INDEX_TYPES or (mtype not in oci.MANIFEST_TYPES and "manifests" in manifest):
                self._write_blob(top_digest, mbytes)
                desc = oci.choose_from_index(manifest, str(r))
                mbytes, mtype, pdigest = client.get_manifest(oci.check_digest(desc.get("digest"), str(r)))
                if pdigest != desc["digest"]:
                    raise ImageError(f"{r}: the registry sent a manifest with digest {pdigest} for {desc['digest']}")
                digests.append(pdigest)
                manifest = oci.load_json(mbytes, f"manifest of {r}")
                mtype = manifest.get("mediaType") or mtype
            if mtype in oci.DOCKER_SCHEMA1 or manifest.get("schemaVersion") == 1:
                raise ImageError(f"{r} uses a Docker schema 1 manifest, which is not supported; push it again "
                                 "with a current docker/podman/skopeo")
            mdigest = digests[-1]
            cdigest = oci.check_digest(oci.as_dict(manifest.get("config")).get("digest"), f"{r} config")
            if self.has_blob(cdigest):
                cbytes = self._read_blob(cdigest)
            else:
                cbytes = client.get_blob_bytes(cdigest, oci.MAX_JSON_BLOB)
                self._write_blob(cdigest, cbytes)
            config = oci.load_json(cbytes, f"config of {r}")
            oci.check_config_platform(config, str(r))
            diff_ids = oci.diff_ids_of(config)
            lds = oci.layers_of(manifest, f"manifest of {r}")
            if len(diff_ids) != len(lds):
                raise ImageError(f"{r}: manifest has {len(lds)} layers but its config lists {len(diff_ids)} "
                                 "diff_ids; the image is malformed")
            if not (self._rootfs_dir(cdigest) / "meta.json").exists():
                total = sum(int(ld.get("size") or 0) for ld in lds) or None
                done = 0
                if progress:
                    progress("pull", 0, total, f"{r}: {len(lds)} layers")
                layers = []
                for i, (ld, diff_id) in enumerate(zip(lds, diff_ids, strict=True)):
                    d = oci.check_digest(ld.get("digest"), f"{r} layer")
                    if not self.has_blob(d):
                        with self._lock("blob-" + d[7:]):
                            if not self.has_blob(d):
                                client.download_blob(d, self._partial_path(d), self._blob_path(d),
                                                     progress=progress, base=done, total=total,
                                                     detail=f"layer {i + 1}/{len(lds)} {d[:19]}")
                    done += int(ld.get("size") or 0)
                    p = self._blob_path(d)
                    layers.append(LayerSource(open=_file_opener(p), digest=d, diff_id=diff_id,
                                              size=ld.get("size")))
                self._materialize(cdigest, cbytes, config, lambda _stage: layers, progress)
            self._write_blob(mdigest, mbytes)
            key = str(parse_reference(save_as)) if save_as else str(r)
            with self._edit_refs() as refs:
                refs[key] = {"config": cdigest, "manifest": mdigest, "digests": digests,
                             "source": "pull" if not save_as else f"pull:{r}", "added": time.time()}
        return self._prepared(cdigest, key)

    def ensure(self, ref: str, **pull_kwargs: Any) -> PreparedImage:
        """The local image if present, else pull it."""
        try:
            return self.get(ref)
        except ImageNotFound:
            if is_image_id(ref) and ref.startswith("sha256:"):
                raise
            return self.pull(ref, **pull_kwargs)

    # ---------------------------------------------------------------------------------------------
    # Listing, naming, removal

    def list(self) -> list[dict[str, Any]]:
        """One dict per reference (plus unnamed images): reference, id, size, created, ..."""
        refs = self._read_refs()
        out = []
        named = set()
        for key, e in sorted(refs.items()):
            named.add(e["config"])
            out.append(self._describe(key, e["config"], e))
        for d in sorted(os.listdir(self.root / "rootfs")):
            cdigest = "sha256:" + d.split(".")[0]
            if cdigest not in named and d.endswith(f".v{UNPACKER_VERSION}"):
                out.append(self._describe("", cdigest, {}))
        return out

    def _describe(self, ref: str, cdigest: str, e: dict[str, Any]) -> dict[str, Any]:
        rdir = self._rootfs_dir(cdigest)
        meta: dict[str, Any] = {}
        config: dict[str, Any] = {}
        with contextlib.suppress(FileNotFoundError, ValueError):
            meta = json.loads((rdir / "meta.json").read_text())
        with contextlib.suppress(FileNotFoundError, ValueError):
            config = json.loads((rdir / "config.json").read_text())
        return {"reference": ref, "id": cdigest, "manifest": e.get("manifest"), "size": meta.get("bytes"),
                "created": config.get("created"), "architecture": config.get("architecture"),
                "os": config.get("os"), "added": e.get("added"), "source": e.get("source"),
                "unpacked": bool(meta)}

    def tag(self, ref_or_id: str, new_ref: str) -> str:
        """Give a local image another name; returns the normalised new name."""
        res = self._resolve(ref_or_id)
        new = str(parse_reference(new_ref))
        entry = dict(res.entry or {"config": res.config_digest, "manifest": None, "digests": []})
        entry.update(source=f"tag:{res.reference or res.config_digest}", added=time.time())
        with self._edit_refs() as refs:
            refs[new] = entry
        return new

    def remove(self, ref: str) -> str:
        """Remove a name (or, given an image ID, every name of that image); frees the image once unnamed.

        Returns the image ID. Raises ImageNotFound if nothing by that name is stored.
        """
        res = self._resolve(ref)
        by_id = is_image_id(ref) and res.config_digest[7:].startswith(ref.strip().removeprefix("sha256:"))
        with self._lock("store"):
            with self._edit_refs() as refs:
                for k in [k for k, e in refs.items()
                          if (by_id and e["config"] == res.config_digest) or k == res.reference]:
                    del refs[k]
                still_used = any(e["config"] == res.config_digest for e in refs.values())
            if not still_used:
                self._gc_locked()
        self._config_cache.pop(res.config_digest, None)
        return res.config_digest

    def gc(self) -> int:
        """Delete unpacked images, blobs and partial downloads no reference needs. Returns bytes freed."""
        with self._lock("store"):
            return self._gc_locked()

    def _gc_locked(self) -> int:
        refs = self._read_refs()
        live_configs = {e["config"] for e in refs.values()}
        live_blobs: set[str] = set(live_configs)
        for e in refs.values():
            for d in [e.get("manifest"), *(e.get("digests") or [])]:
                if not d:
                    continue
                live_blobs.add(d)
                p = self._blob_path(d)
                with contextlib.suppress(FileNotFoundError, ImageError, ValueError, AttributeError, TypeError):
                    m = json.loads(p.read_bytes())
                    for ld in m.get("layers") or []:
                        live_blobs.add(ld.get("digest"))
                    # an index keeps the manifests it lists only if we stored them (other platforms: not)
        freed = 0
        for d in os.listdir(self.root / "rootfs"):
            cdigest = "sha256:" + d.split(".")[0]
            if cdigest in live_configs and d.endswith(f".v{UNPACKER_VERSION}"):
                continue
            path = self.root / "rootfs" / d
            size, _ = tree_size(path)
            force_rmtree(path)
            freed += size
            self._config_cache.pop(cdigest, None)
        for name in os.listdir(self.root / "blobs" / "sha256"):
            if "sha256:" + name in live_blobs:
                continue
            p = self.root / "blobs" / "sha256" / name
            with contextlib.suppress(FileNotFoundError):
                freed += p.stat().st_size
                p.unlink()
        for name in os.listdir(self.root / "blobs" / "partial"):
            p = self.root / "blobs" / "partial" / name
            with contextlib.suppress(FileNotFoundError):
                freed += p.stat().st_size
                p.unlink()
        self._drop_idle_locks()
        return freed

    def _drop_idle_locks(self) -> None:
        # Per-image and per-blob lock files pile up otherwise. Safe only under the exclusive store lock:
        # everything that takes these locks holds the store lock shared, so nobody is between open and flock.
        for name in os.listdir(self.root / "locks"):
            if not name.startswith(("unpack-", "blob-")):
                continue
            path = self.root / "locks" / name
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink()
                except BlockingIOError:
                    pass
                finally:
                    os.close(fd)

    def disk_usage(self) -> int:
        """Bytes used by the whole store."""
        return sum(tree_size(self.root / d)[0] for d in ("blobs", "rootfs"))

    def digest_of(self, ref: str) -> str | None:
        """The image ID the name `ref` points to now (a cheap read of the tag table), or None when
        the store has no such image. Used to notice a tag that moved (rebuild, re-pull, import)."""
        try:
            return self._resolve(ref).config_digest
        except (ImageNotFound, ImageError):
            return None

    def prune(self, keep: "set[str] | list[str]", dry_run: bool = False) -> dict[str, Any]:
        """Remove every image name whose image none of `keep` (references or image IDs, e.g. the
        images of all actors) points to, then every blob, unpacked tree and partial download no name
        needs. Returns {"removed": [names], "freed_bytes": n} (with dry_run: what would go, freed 0)."""
        wanted = {d for d in (self.digest_of(r) for r in keep) if d}
        with self._lock("store"):
            with self._edit_refs() as refs:
                gone = sorted(k for k, e in refs.items() if e["config"] not in wanted)
                if not dry_run:
                    for k in gone:
                        del refs[k]
            freed = 0 if dry_run else self._gc_locked()
        self._config_cache.clear()
        return {"removed": gone, "freed_bytes": freed}

def open_image_store(settings: Any, **kwargs: Any) -> ImageStore:
    """The image store under an instance's home, with the per-image limits and the per-home quota of its
    settings (`image_max_*`, `images_max_*`). Takes any object with those attributes: the image store does
    not import the service's settings module."""
    limits = UnpackLimits(max_bytes=settings.image_max_bytes, max_inodes=settings.image_max_inodes)
    quota = StoreQuota(max_bytes=settings.images_max_bytes, max_inodes=settings.images_max_inodes)
    return ImageStore(settings.images_dir, limits=limits, quota=quota, **kwargs)
