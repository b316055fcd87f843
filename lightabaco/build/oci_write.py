"""Write OCI image layouts from directory trees: snapshots, diffs, layer tars, manifests.

The image builder and the offline base images use this; the image store (`images/`) imports what it
writes. Layers are written as uncompressed tars: they only travel from this directory to the local store
on the same disk, where compressing and decompressing would cost seconds and save nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from lightabaco.sandbox.types import ImageConfig

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
# Fixed timestamp for files the builder creates itself, so equal inputs give equal digests.
EPOCH = 1_700_000_000

Entry = tuple[int, int, int, int, int, str]  # mode, size, mtime_ns, uid, gid, link target


def snapshot(root: Path) -> dict[str, Entry]:
    """Every path under root (relative, '/'-separated) with what a layer diff needs to compare."""
    result: dict[str, Entry] = {}
    root_str = str(root)
    for dirpath, dirnames, filenames in os.walk(root_str):
        rel_dir = os.path.relpath(dirpath, root_str)
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            result[rel] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_uid, st.st_gid, target)
    return result


def diff(before: dict[str, Entry], after: dict[str, Entry]) -> tuple[list[str], list[str]]:
    """(paths added or changed, paths deleted) between two snapshots; deletions are minimal (no children
    of an already deleted directory)."""
    changed = sorted(p for p, e in after.items() if before.get(p) != e)
    deleted: list[str] = []
    for path in sorted(set(before) - set(after)):
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent and parent not in after:
            continue  # the parent's whiteout (or replacement) covers it
        deleted.append(path)
    return changed, deleted


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _owner(uid: int, gid: int) -> tuple[int, int]:
    # Rootless builds own every file as the building user; inside the image that user is root.
    if os.getuid() == 0:
        return uid, gid
    return (0 if uid == os.getuid() else uid), (0 if gid == os.getgid() else gid)


def write_layer(root: Path, paths: Iterable[str], deleted: Iterable[str], out: Path,
                owners: dict[str, tuple[int, int]] | None = None) -> None:
    """A layer tar holding `paths` from root (parents first, as given sorted) plus whiteouts.
    `owners` overrides the uid/gid recorded for some paths (what an unprivileged build could not chown)."""
    owners = owners or {}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in deleted:
            parent, _, name = rel.rpartition("/")
            info = tarfile.TarInfo(f"{parent}/.wh.{name}" if parent else f".wh.{name}")
            info.mtime = EPOCH
            tar.addfile(info)
        for rel in paths:
            full = root / rel
            mode = os.lstat(full).st_mode
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                continue  # runtime artefacts and device nodes never belong in a layer
            info = tar.gettarinfo(str(full), arcname=rel)
            info.uid, info.gid = owners.get(rel) or _owner(info.uid, info.gid)
            info.uname = info.gname = ""
            if info.isreg():
                with open(full, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)


def tree_paths(root: Path) -> list[str]:
    """Every path under root, sorted so that parents come before children."""
    return sorted(snapshot(root))


@dataclass
class LayerRef:
    descriptor: dict
    diff_id: str
    blob: Path


class LayoutWriter:
    """Assemble one image as an OCI layout directory: add layers, then finish() with a config."""

    def __init__(self, dest: Path):
        self.dest = dest
        (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.layers: list[LayerRef] = []

    def _store_file(self, path: Path, move: bool) -> tuple[str, int]:
        hexdigest = _sha256_file(path)
        target = self.dest / "blobs" / "sha256" / hexdigest
        size = path.stat().st_size
        if not target.exists():
            if move:
                os.replace(path, target)
            else:
                try:
                    os.link(path, target)  # blobs are immutable, so sharing the inode is safe
                except OSError:
                    shutil.copyfile(path, target)
        elif move:
            path.unlink()
        return "sha256:" + hexdigest, size

    def _store_bytes(self, data: bytes) -> tuple[str, int]:
        hexdigest = hashlib.sha256(data).hexdigest()
        (self.dest / "blobs" / "sha256" / hexdigest).write_bytes(data)
        return "sha256:" + hexdigest, len(data)

    def add_layer_tar(self, tar_path: Path, move: bool = True) -> LayerRef:
        """Add an uncompressed layer tar (its digest is also its diff_id)."""
        digest, size = self._store_file(tar_path, move)
        ref = LayerRef({"mediaType": LAYER_MEDIA_TYPE, "digest": digest, "size": size}, digest,
                       self.dest / "blobs" / "sha256" / digest.split(":", 1)[1])
        self.layers.append(ref)
        return ref

    def add_existing(self, layer: LayerRef) -> None:
        """Reuse a layer of another layout (a base image) without rewriting or re-hashing it (the
        importer verifies every digest anyway)."""
        digest = layer.descriptor["digest"]
        target = self.dest / "blobs" / "sha256" / digest.split(":", 1)[1]
        if not target.exists():
            try:
                os.link(layer.blob, target)
            except OSError:
                shutil.copyfile(layer.blob, target)
        self.layers.append(LayerRef(dict(layer.descriptor), layer.diff_id,
                                    self.dest / "blobs" / "sha256" / digest.split(":", 1)[1]))

    def finish(self, config: dict, ref: str | None = None, history: list[dict] | None = None) -> str:
        """Write config, manifest and index.json; returns the config digest (the image ID)."""
        document = {
            "architecture": config.pop("architecture", "amd64"),
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": history or [],
        }
        config_digest, config_size = self._store_bytes(json.dumps(document, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config_size},
            "layers": [layer.descriptor for layer in self.layers],
        }
        manifest_digest, manifest_size = self._store_bytes(json.dumps(manifest, sort_keys=True).encode())
        entry: dict = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": manifest_digest, "size": manifest_size}
        if ref:
            entry["annotations"] = {REF_ANNOTATION: ref}
        (self.dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
        return config_digest


def read_layout(layout: Path) -> tuple[dict, list[LayerRef], str]:
    """(image config document, layers, config digest) of the first image in an OCI layout we wrote."""
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":", 1)[1]).read_text())
    config_digest = manifest["config"]["digest"]
    document = json.loads((blobs / config_digest.split(":", 1)[1]).read_text())
    layers = [LayerRef(d, diff_id, blobs / d["digest"].split(":", 1)[1])
              for d, diff_id in zip(manifest["layers"], document["rootfs"]["diff_ids"])]
    return document, layers, config_digest


def config_from_image(config: ImageConfig) -> dict:
    """The OCI "config" object for an ImageConfig (for bases that came from the store)."""
    out: dict = {}
    if config.env:
        out["Env"] = list(config.env)
    if config.entrypoint:
        out["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        out["Cmd"] = list(config.cmd)
    if config.working_dir:
        out["WorkingDir"] = config.working_dir
    if config.user:
        out["User"] = config.user
    if config.labels:
        out["Labels"] = dict(config.labels)
    return out


def flatten_to_layout(rootfs: Path, config: dict, dest: Path) -> None:
    """One-layer layout of a whole tree (used to rebase on an image known only by its rootfs)."""
    writer = LayoutWriter(dest)
    fd, tmp = tempfile.mkstemp(dir=dest, suffix=".tar")
    os.close(fd)
    write_layer(rootfs, tree_paths(rootfs), [], Path(tmp))
    writer.add_layer_tar(Path(tmp))
    writer.finish(dict(config))
