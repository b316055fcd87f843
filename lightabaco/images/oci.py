"""Reading images from local files: OCI image layout dirs, oci-archive tars and docker-archive tars.

Also the pieces shared with registry pulls: media types, platform matching, and parsing the image
config into `ImageConfig`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from lightabaco.sandbox.errors import ImageError
from lightabaco.sandbox.types import ImageConfig
from .reference import parse_reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
MAX_JSON_BLOB = 16 << 20  # manifests and configs are small; refuse to buffer a huge "config"

_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "i386": "386",
            "i686": "386", "armv7l": "arm", "armv6l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}


# ---------------------------------------------------------------------------------------------------
# Platforms


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this host in OCI spelling, e.g. ("linux", "amd64", "")."""
    m = platform.machine().lower()
    arch = _GO_ARCH.get(m, m)
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(m, "")
    return "linux", arch, variant


def platform_str(p: dict[str, Any] | None) -> str:
    if not p:
        return "unknown"
    s = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return s + (f"/{p['variant']}" if p.get("variant") else "")


def platform_matches(p: dict[str, Any] | None) -> bool:
    """True if an index entry's platform can run here (a missing platform is taken as a match)."""
    if not p:
        return True
    os_, arch, variant = host_platform()
    if p.get("os", os_) != os_ or p.get("architecture", arch) != arch:
        return False
    want = p.get("variant") or ""
    if arch == "arm64":
        return want in ("", "v8")
    return not variant or not want or want == variant


def choose_from_index(index: dict[str, Any], where: str) -> dict[str, Any]:
    """The descriptor in an image index / manifest list that matches this host."""
    entries = [d for d in index.get("manifests") or [] if isinstance(d, dict)]
    # Attestation manifests (buildx) carry platform unknown/unknown: never pick them.
    candidates = [d for d in entries if (d.get("platform") or {}).get("os") != "unknown"
                  and platform_matches(d.get("platform"))]
    if not candidates:
        have = sorted({platform_str(d.get("platform")) for d in entries}) or ["nothing"]
        os_, arch, variant = host_platform()
        raise ImageError(f"{where} has no image for this host ({os_}/{arch}{'/' + variant if variant else ''}); "
                         f"it has: {', '.join(have)}. Use an image built for {arch}")
    # Prefer an exact variant match, then entries that name a platform at all.
    def score(d: dict[str, Any]) -> int:
        p = d.get("platform") or {}
        return (2 if p else 0) + (1 if p.get("variant") == host_platform()[2] else 0)

    return max(candidates, key=score)


def check_config_platform(config: dict[str, Any], where: str) -> None:
    """Refuse an image built for another os/architecture, with a message that says so."""
    os_, arch, _ = host_platform()
    img_os, img_arch = config.get("os") or "", config.get("architecture") or ""
    if (img_os and img_os != os_) or (img_arch and img_arch != arch):
        raise ImageError(f"{where} is built for {img_os or '?'}/{img_arch or '?'} but this host is {os_}/{arch}; "
                         f"use the {arch} variant of the image (or a multi-platform tag)")


def as_dict(x: Any) -> dict[str, Any]:
    """`x` if it is a JSON object, else {} (malformed optional parts are treated as missing)."""
    return x if isinstance(x, dict) else {}


def diff_ids_of(config: dict[str, Any]) -> list[Any]:
    ids = as_dict(config.get("rootfs")).get("diff_ids") or []
    return ids if isinstance(ids, list) else []


def layers_of(manifest: dict[str, Any], what: str) -> list[dict[str, Any]]:
    layers = manifest.get("layers") or []
    if not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
        raise ImageError(f"{what}: malformed layer list in the manifest; the image is malformed")
    return layers


def parse_image_config(config: dict[str, Any]) -> ImageConfig:
    """Entrypoint, Cmd, Env, WorkingDir, User and Labels of an image config (missing -> empty)."""
    c = as_dict(config.get("config"))

    def strlist(v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str):
            return [v]
        return [str(x) for x in v]

    return ImageConfig(
        entrypoint=strlist(c.get("Entrypoint")),
        cmd=strlist(c.get("Cmd")),
        env=strlist(c.get("Env")),
        working_dir=str(c.get("WorkingDir") or ""),
        user=str(c.get("User") or ""),
        labels={str(k): str(v) for k, v in as_dict(c.get("Labels")).items()},
    )


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: Any, what: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ImageError(f"{what}: unsupported or malformed digest {digest!r} (only sha256 is supported)")
    return digest


def load_json(data: bytes, what: str, kind: type = dict) -> Any:
    """Parse a manifest/config/index; it must be a JSON object (or `kind`)."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"{what} is not valid JSON ({e}); the image is malformed") from None
    if not isinstance(obj, kind):
        raise ImageError(f"{what} is a JSON {type(obj).__name__}, not a {kind.__name__}; the image is malformed")
    return obj


# ---------------------------------------------------------------------------------------------------
# Containers: a directory or a tar, addressed by relative names


class _Container:
    def exists(self, name: str) -> bool: raise NotImplementedError
    def open(self, name: str) -> BinaryIO: raise NotImplementedError
    def size(self, name: str) -> int | None: raise NotImplementedError
    def close(self) -> None: pass

    def read(self, name: str, limit: int = MAX_JSON_BLOB) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ImageError(f"{name} in the image is larger than {limit} bytes; refusing to read it")
        return data


def _safe_rel(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ImageError(f"the image refers to file {name!r}, which is outside the image; refusing")
    return "/".join(parts)


class _DirContainer(_Container):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        return self.root / _safe_rel(name)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise ImageError(f"{self.root}: {name} is missing; the image is incomplete") from None

    def size(self, name: str) -> int | None:
        return self._path(name).stat().st_size


class _TarContainer(_Container):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tf = tarfile.open(path, "r:*")
            self.members = {_norm(m.name): m for m in self.tf.getmembers()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ImageError(f"{path} is not a readable tar archive ({e}); give an OCI layout directory, an "
                             "oci-archive or a docker-archive (`podman save` / `docker save` output)") from None

    def exists(self, name: str) -> bool:
        return _norm(name) in self.members

    def open(self, name: str) -> BinaryIO:
        m = self.members.get(_norm(name))
        try:
            # follows links to other members of the archive (docker-archive), never to host files
            f = self.tf.extractfile(m) if m is not None else None
        except (KeyError, tarfile.TarError):
            f = None
        if f is None:
            raise ImageError(f"{self.path}: {name} is missing or not a file; the archive is incomplete")
        return f  # type: ignore[return-value]

    def size(self, name: str) -> int | None:
        m = self.members.get(_norm(name))
        return m.size if m is not None and m.isfile() else None

    def close(self) -> None:
        self.tf.close()


def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


# ---------------------------------------------------------------------------------------------------
# Images in a source


@dataclass
class LayerRef:
    """One layer of a source image. `digest` is None when the source does not say (docker-archive)."""

    name: str  # container member name
    digest: str | None
    diff_id: str
    size: int | None
    media_type: str = OCI_LAYER_TAR


@dataclass
class SourceImage:
    names: list[str]
    config: dict[str, Any]
    config_bytes: bytes
    config_digest: str
    manifest_digest: str | None
    manifest_bytes: bytes | None
    layers: list[LayerRef] = field(default_factory=list)


class ImageSource:
    """An OCI layout / oci-archive / docker-archive opened for reading. Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            self.c: _Container = _DirContainer(self.path)
        elif self.path.is_file():
            self.c = _TarContainer(self.path)
        else:
            raise ImageError(f"{path} does not exist: give an OCI layout directory or an archive file")
        if self.c.exists("index.json"):
            self.kind = "oci"
        elif self.c.exists("manifest.json"):
            self.kind = "docker"
        else:
            self.c.close()
            raise ImageError(f"{path} has neither index.json (OCI layout) nor manifest.json (docker-archive); "
                             "create it with `podman save --format oci-archive IMAGE -o FILE`, `docker save` "
                             "or `skopeo copy ... oci:DIR`")

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.c.close()

    def blob_name(self, digest: str) -> str:
        check_digest(digest, str(self.path))
        return "blobs/sha256/" + digest.split(":", 1)[1]

    def read_blob(self, digest: str, what: str) -> bytes:
        data = self.c.read(self.blob_name(digest))
        if sha256_digest(data) != digest:
            raise ImageError(f"{self.path}: {what} blob {digest} does not match its digest; the image is corrupt")
        return data

    def open_layer(self, layer: LayerRef) -> BinaryIO:
        return self.c.open(layer.name)

    def images(self) -> list[SourceImage]:
        return self._oci_images() if self.kind == "oci" else self._docker_images()

    # -- OCI layout

    def _docker_names_by_config(self) -> dict[str, list[str]]:
        """RepoTags per config digest from manifest.json, when an OCI layout also has one (Docker >= 25)."""
        if not self.c.exists("manifest.json"):
            return {}
        try:
            entries = load_json(self.c.read("manifest.json"), "manifest.json", list)
            out: dict[str, list[str]] = {}
            for e in entries:
                hexd = os.path.basename(str(e.get("Config", ""))).split(".")[0]
                out["sha256:" + hexd] = [str(t) for t in e.get("RepoTags") or []]
            return out
        except (ImageError, AttributeError, TypeError):
            return {}

    def _oci_images(self) -> list[SourceImage]:
        index = load_json(self.c.read("index.json"), f"{self.path}: index.json")
        docker_names = self._docker_names_by_config()
        images: list[SourceImage] = []
        skipped: list[str] = []
        for desc in index.get("manifests") or []:
            if not isinstance(desc, dict):
                raise ImageError(f"{self.path}: index.json has a malformed entry {desc!r}")
            ann = as_dict(desc.get("annotations"))
            names = _names_from_annotations(ann)
            desc = self._resolve_descriptor(desc, skipped)
            if desc is None:
                continue
            mdigest = check_digest(desc.get("digest"), f"{self.path}: index.json")
            mbytes = self.read_blob(mdigest, "manifest")
            manifest = load_json(mbytes, f"{self.path}: manifest {mdigest}")
            mtype = manifest.get("mediaType") or desc.get("mediaType") or OCI_MANIFEST
            if mtype in DOCKER_SCHEMA1 or manifest.get("schemaVersion") == 1:
                raise ImageError(f"{self.path}: Docker schema 1 manifests are not supported; re-save the image "
                                 "with a current podman/docker/skopeo")
            img = self._image_from_manifest(manifest, mbytes, mdigest)
            if not names or all(":" not in n and "/" not in n for n in names):
                names = docker_names.get(img.config_digest, []) or []
            img.names = names
            images.append(img)
        if not images:
            if skipped:
                os_, arch, _ = host_platform()
                raise ImageError(f"{self.path} has no image for {os_}/{arch}; it has: {', '.join(sorted(skipped))}")
            raise ImageError(f"{self.path}: index.json lists no images")
        return images

    def _resolve_descriptor(self, desc: dict[str, Any], skipped: list[str]) -> dict[str, Any] | None:
        """Descend through nested indexes to the manifest for this host; None if the entry is for another."""
        for _ in range(8):
            mtype = desc.get("mediaType")
            if mtype in INDEX_TYPES:
                digest = check_digest(desc.get("digest"), f"{self.path}: index entry")
                nested = load_json(self.read_blob(digest, "index"), f"{self.path}: index {digest}")
                desc = choose_from_index(nested, f"{self.path} (index {digest[:19]})")
                continue
            if desc.get("platform") and not platform_matches(desc.get("platform")):
                skipped.append(platform_str(desc.get("platform")))
                return None
            return desc
        raise ImageError(f"{self.path}: image indexes nested too deeply; the image is malformed")

    def _image_from_manifest(self, manifest: dict[str, Any], mbytes: bytes, mdigest: str) -> SourceImage:
        cdesc = as_dict(manifest.get("config"))
        cdigest = check_digest(cdesc.get("digest"), f"{self.path}: manifest {mdigest} config")
        cbytes = self.read_blob(cdigest, "config")
        config = load_json(cbytes, f"{self.path}: config {cdigest}")
        diff_ids = diff_ids_of(config)
        layers = layers_of(manifest, f"{self.path}: manifest {mdigest}")
        if len(diff_ids) != len(layers):
            raise ImageError(f"{self.path}: manifest has {len(layers)} layers but the config lists "
                             f"{len(diff_ids)} diff_ids; the image is malformed")
        refs = []
        for ld, diff_id in zip(layers, diff_ids, strict=True):
            d = check_digest(ld.get("digest"), f"{self.path}: layer")
            refs.append(LayerRef(self.blob_name(d), d, check_digest(diff_id, "diff_id"), ld.get("size"),
                                 ld.get("mediaType") or OCI_LAYER_TAR))
        return SourceImage([], config, cbytes, cdigest, mdigest, mbytes, refs)

    # -- docker-archive

    def _docker_images(self) -> list[SourceImage]:
        entries = load_json(self.c.read("manifest.json"), f"{self.path}: manifest.json", list)
        if not entries or not all(isinstance(e, dict) for e in entries):
            raise ImageError(f"{self.path}: manifest.json lists no images")
        images = []
        for e in entries:
            cname = str(e.get("Config", ""))
            cbytes = self.c.read(cname)
            cdigest = sha256_digest(cbytes)
            hexname = os.path.basename(cname).split(".")[0]
            if re.fullmatch(r"[a-f0-9]{64}", hexname) and "sha256:" + hexname != cdigest:
                raise ImageError(f"{self.path}: config {cname} does not match its name; the archive is corrupt")
            config = load_json(cbytes, f"{self.path}: {cname}")
            diff_ids = diff_ids_of(config)
            lnames = [str(x) for x in e.get("Layers") or []]
            if len(diff_ids) != len(lnames):
                raise ImageError(f"{self.path}: manifest.json has {len(lnames)} layers but the config lists "
                                 f"{len(diff_ids)} diff_ids; the archive is malformed")
            layers = []
            for ln, diff_id in zip(lnames, diff_ids, strict=True):
                _safe_rel(ln)
                # docker save stores layers as plain tars named by diff_id; the digest is found on copy
                layers.append(LayerRef(ln, None, check_digest(diff_id, "diff_id"), self.c.size(ln)))
            names = [str(t) for t in e.get("RepoTags") or []]
            images.append(SourceImage(names, config, cbytes, cdigest, None, None, layers))
        return images


def _names_from_annotations(ann: dict[str, str]) -> list[str]:
    names = []
    for key in (CONTAINERD_NAME, REF_NAME):
        v = ann.get(key)
        if v and v not in names:
            names.append(v)
    return names


def usable_names(names: list[str]) -> list[str]:
    """Drop bare tags ("latest") and unparsable names; keep full references, normalised."""
    out = []
    for n in names:
        if ":" not in n and "/" not in n and "@" not in n:
            continue  # a bare tag from `oci:DIR:tag`: not a name
        try:
            s = str(parse_reference(n))
        except ImageError:
            continue
        if s not in out:
            out.append(s)
    return out


def synthesize_manifest(config_digest: str, config_size: int, layers: list[tuple[str, int, str]]) -> bytes:
    """An OCI manifest for an image that came without one (docker-archive)."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": config_size},
        "layers": [{"mediaType": mt, "digest": d, "size": s} for d, s, mt in layers],
    }, sort_keys=True, separators=(",", ":")).encode()


def bytes_io(data: bytes) -> BinaryIO:
    return io.BytesIO(data)
