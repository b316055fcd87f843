"""Build a Containerfile into the image store without Docker: `lightabaco images build DIR [--tag NAME]`.

How (bwrap engine, the default):
1. The base (FROM) is laid out as a directory tree: built-in bases (`lightabaco/busybox`,
   `lightabaco/python`, see bases.py) from their cached layers; any other image from the store (pulled
   first when missing); `scratch` is empty.
2. Every instruction is applied to that tree in order. RUN executes in a bubblewrap sandbox with the tree
   bound writable as `/` (network shared by default, as `docker build` does, so `pip install` works).
3. The tree is compared with a snapshot of the base; what changed becomes one new layer on top of the
   base's layers, written as an OCI layout and imported with `ImageStore.import_path`.
The result is cached by a hash of the Containerfile, the build context, the build arguments and the
base's image ID: a second build of the same inputs only re-tags.

With `engine="podman"` podman builds instead (`podman build --isolation=chroot`, private storage under
the cache directory) and its `oci-archive` is imported the same way.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from . import bases
from .containerfile import (BuildError, Instruction, command, expand, find_containerfile, key_values,
                            parse, sources_and_dest)
from .oci_write import (LayoutWriter, config_from_image, diff, flatten_to_layout, read_layout, snapshot,
                        write_layer)
from .types import PreparedImage

BUILDER_VERSION = "1"
Progress = Callable[[str, int, "int | None", str], None]
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_ENV_PASSTHROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                        "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


class Store(Protocol):
    """The parts of lightabaco.sandbox.images.ImageStore the builder uses."""

    def get(self, ref: str) -> PreparedImage: ...
    def ensure(self, ref: str, **kwargs: Any) -> PreparedImage: ...
    def import_path(self, path: Any, tag: str | None = None, progress: Any = None) -> list[PreparedImage]: ...
    def tag(self, ref_or_id: str, new_ref: str) -> Any: ...


@dataclass
class BuildResult:
    image: PreparedImage
    config_digest: str
    cached: bool
    seconds: float
    steps: list[str] = field(default_factory=list)


@dataclass
class _State:
    variables: dict[str, str]
    env: list[str]
    config: dict[str, Any]
    workdir: str = "/"
    user: str = ""
    entrypoint_set: bool = False
    cmd_set: bool = False


def _context_digest(context: Path, ignore: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(context.rglob("*")):
        rel = path.relative_to(context).as_posix()
        if _ignored(rel, ignore):
            continue
        st = path.lstat()
        digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _ignore_patterns(context: Path) -> list[str]:
    for name in (".containerignore", ".dockerignore"):
        path = context / name
        if path.is_file():
            return [line.strip().strip("/") for line in path.read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    return []


def _ignored(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or rel.startswith(p + "/") for p in patterns)


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


def _lookup_ids(root: Path, spec: str) -> tuple[int, int]:
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


class _Builder:
    def __init__(self, context: Path, root: Path, source: str, network: str, progress: Progress | None,
                 skeleton: _Skeleton | None = None):
        self.context, self.root, self.source = context, root, source
        self.skeleton = skeleton
        self.network, self.progress = network, progress
        self.created_mounts: list[Path] = []
        self.owners: dict[str, tuple[int, int]] = {}
        self.parent_times: dict[Path, tuple[int, int]] = {}

    def resolve(self, path: str, follow_last: bool = True) -> Path:
        if self.skeleton is not None:
            self.skeleton.ensure(self.root, path)
        return resolve_in_root(self.root, path, follow_last)

    def ids(self, spec: str) -> tuple[int, int]:
        if self.skeleton is not None:
            for name in _Skeleton.ACCOUNT_FILES:
                self.skeleton.ensure(self.root, "/" + name)
        return _lookup_ids(self.root, spec)

    def where(self, instruction: Instruction) -> str:
        return f"{self.source}:{instruction.line}"

    # -- COPY / ADD ------------------------------------------------------------------------------
    def copy(self, st: _State, ins: Instruction, ignore: list[str]) -> None:
        sources, dest = sources_and_dest(ins, self.source)
        dest = expand(dest, st.variables)
        if not dest.startswith("/"):
            dest = os.path.join(st.workdir, dest)
        matches: list[Path] = []
        context_real = self.context.resolve()
        for src in sources:
            found = sorted(glob.glob(str(self.context / expand(src, st.variables)), recursive=False))
            found = [f for f in found if not _ignored(Path(f).relative_to(self.context).as_posix(), ignore)]
            if not found:
                raise BuildError(f"{self.where(ins)}: {src} matches nothing in the build context {self.context}")
            for f in found:
                real = Path(f).resolve()
                if real != context_real and context_real not in real.parents:
                    raise BuildError(f"{self.where(ins)}: {src} points outside the build context")
                matches.append(Path(f))
        to_dir = dest.endswith("/") or len(matches) > 1 or any(m.is_dir() for m in matches)
        owner = self.ids(expand(ins.flags["chown"], st.variables)) if ins.flags.get("chown") else None
        mode = int(ins.flags["chmod"], 8) if ins.flags.get("chmod") else None
        for match in matches:
            if ins.keyword == "ADD" and match.is_file() and match.name.endswith(_ARCHIVE_SUFFIXES):
                self._extract(match, self.resolve(dest), ins)
                continue
            target_dir = self.resolve(dest) if to_dir else self.resolve(os.path.dirname(dest) or "/")
            target_dir.mkdir(parents=True, exist_ok=True)
            if match.is_dir():
                for item in sorted(match.rglob("*")):
                    rel = item.relative_to(match)
                    if _ignored(item.relative_to(self.context).as_posix(), ignore):
                        continue
                    self._copy_one(item, target_dir / rel, owner, mode)
            else:
                target = target_dir / match.name if to_dir else self.resolve(dest)
                self._copy_one(match, target, owner, mode)

    def _copy_one(self, src: Path, target: Path, owner: tuple[int, int] | None, mode: int | None) -> None:
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            target.unlink()
        if src.is_symlink():
            os.symlink(os.readlink(src), target)
        elif src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copystat(src, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
            if mode is not None:
                os.chmod(target, mode)
        if os.getuid() == 0:
            os.lchown(target, *(owner or (0, 0)))  # COPY without --chown gives root-owned files, as Docker does
        elif owner is not None:
            # Unprivileged builds cannot chown: the owner is written into the layer's tar headers instead.
            self.owners[target.relative_to(self.root).as_posix()] = owner

    def _extract(self, archive: Path, dest: Path, ins: Instruction) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        if not hasattr(tarfile, "tar_filter"):
            raise BuildError(f"{self.where(ins)}: ADD of an archive needs Python >= 3.11.4 (safe tar "
                             "extraction); extract it into the context and COPY the files instead")
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="tar")  # refuses members that would land outside dest
        except (tarfile.TarError, OSError) as exc:
            raise BuildError(f"{self.where(ins)}: cannot extract {archive.name}: {exc}") from None

    # -- RUN -------------------------------------------------------------------------------------
    def run(self, st: _State, ins: Instruction) -> str:
        argv = command(ins)
        if not argv:
            raise BuildError(f"{self.where(ins)}: RUN needs a command")
        bwrap = shutil.which("bwrap")
        if not bwrap:
            raise BuildError("RUN needs bubblewrap: `sudo apt-get install -y bubblewrap` (or --engine podman)")
        uid, gid = _lookup_ids(self.root, st.user) if st.user else (0, 0)
        workdir = self.resolve(st.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("proc", "dev", "tmp"):
            path = self.root / name
            if not path.exists() and not path.is_symlink():
                self._remember_parent(path)
                path.mkdir()
                self.created_mounts.append(path)
        if os.getuid() == 0 and uid == 0:
            # Real root builds like `docker build`: no user namespace, so root keeps its capabilities
            # over files owned by other uids (chown, chmod of COPY --chown files, package managers).
            # (--unshare-all would still try a user namespace, so the namespaces are listed one by one.)
            args = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try",
                    "--cap-add", "ALL"]
            if self.network != "host":
                args.append("--unshare-net")
        else:
            args = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(uid), "--gid", str(gid)]
            if self.network == "host":
                args.append("--share-net")
        args += ["--die-with-parent", "--new-session",
                 "--bind", str(self.root), "/", "--proc", "/proc", "--dev", "/dev"]
        resolv = self.root / "etc" / "resolv.conf"
        if self.network == "host" and Path("/etc/resolv.conf").exists() and (self.root / "etc").is_dir() \
                and not resolv.is_symlink():
            if not resolv.exists():
                self._remember_parent(resolv)
                resolv.touch()
                self.created_mounts.append(resolv)
            args += ["--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf"]
        extra_env = {}
        if self.network == "host":
            args += self._host_trust(extra_env)
        args += ["--chdir", st.workdir, "--"] + argv
        env = dict(e.split("=", 1) for e in st.env if "=" in e)
        env.setdefault("PATH", bases.DEFAULT_PATH.split("=", 1)[1])
        env.setdefault("HOME", "/root" if uid == 0 else "/")
        env.update({k: v for k, v in st.variables.items() if k not in env})  # ARGs are visible to RUN
        env.update({k: v for k, v in extra_env.items() if k not in env})
        proc = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
        output = proc.stdout.decode(errors="replace")
        if proc.returncode != 0:
            tail = "\n".join(output.rstrip().splitlines()[-15:])
            raise BuildError(f"{self.where(ins)}: RUN {ins.args[:120]} failed with exit status "
                             f"{proc.returncode}:\n{tail}")
        return output

    def _remember_parent(self, path: Path) -> None:
        st = path.parent.stat()
        self.parent_times.setdefault(path.parent, (st.st_atime_ns, st.st_mtime_ns))

    def _host_trust(self, env: dict[str, str]) -> list[str]:
        """Let RUN reach package indexes the way the host does: the host's CA bundle (hosts behind a
        TLS-inspecting proxy add their CA there) and its proxy/pip index variables, as `docker build`
        passes proxy variables through."""
        for name in HOST_ENV_PASSTHROUGH:
            if os.environ.get(name):
                env[name] = os.environ[name]
        bundle = next((Path(os.environ[v]) for v in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
                       if os.environ.get(v) and Path(os.environ[v]).is_file()), Path(HOST_CA_BUNDLE))
        if not bundle.is_file() or (self.root / "run").is_symlink():
            return []
        run_dir = self.root / "run"
        if not run_dir.exists():
            self._remember_parent(run_dir)
            run_dir.mkdir()
            self.created_mounts.append(run_dir)
        target = run_dir / "lightabaco-host-ca.crt"
        if not target.exists():
            target.touch()
            self.created_mounts.append(target)
        for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
            env[name] = "/run/lightabaco-host-ca.crt"
        return ["--ro-bind", str(bundle), "/run/lightabaco-host-ca.crt"]

    def cleanup_mounts(self) -> None:
        # Mount points that bwrap needed but the image did not have: leave the image as it was, parent
        # directory times included, so they do not show up in the layer diff.
        for path in reversed(self.created_mounts):
            try:
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
                elif path.is_file() and path.stat().st_size == 0:
                    path.unlink()
            except OSError:
                pass
        for parent, times in self.parent_times.items():
            try:
                os.utime(parent, ns=times)
            except OSError:
                pass


def _base_layout(base: str, store: Store, cache_dir: Path, progress: Progress | None) -> Path | None:
    if base == "scratch":
        return None
    if bases.builtin_name(base):
        return bases.ensure_base(base, cache_dir, progress)
    image = store.ensure(base, progress=progress) if hasattr(store, "ensure") else store.get(base)
    dest = cache_dir / "flat" / image.config_digest.replace(":", "-")
    if not (dest / "index.json").exists():
        tmp = Path(tempfile.mkdtemp(prefix="flat-", dir=_mkdir(cache_dir / "flat")))
        cfg = config_from_image(image.config)
        flatten_to_layout(image.rootfs, cfg, tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Skeleton:
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


def _unpack_layers(layout: Path, root: Path) -> None:
    # Only layouts this module wrote (built-in bases, flattened store images): trusted, no whiteouts.
    _, layers, _ = read_layout(layout)
    for layer in layers:
        argv = ["tar", "-xf", str(layer.blob), "-C", str(root), "--numeric-owner"]
        if os.getuid() != 0:
            argv += ["--no-same-owner", "--no-same-permissions"]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"cannot lay out base layer {layer.diff_id[:19]}: {proc.stderr.strip()[:300]}")


def build_layout(context: Path, dest: Path, store: Store, cache_dir: Path, *, tag: str | None = None,
                 file: str | None = None, build_args: dict[str, str] | None = None, network: str = "host",
                 progress: Progress | None = None) -> tuple[str, str, list[str]]:
    """Build `context` into an OCI layout at `dest`; returns (config digest, cache key, step log)."""
    context = context.resolve()
    containerfile = find_containerfile(context, file)
    text = containerfile.read_text()
    instructions = parse(text, containerfile.name)
    build_args = dict(build_args or {})
    variables: dict[str, str] = {}
    index = 0
    while instructions[index].keyword == "ARG":  # ARGs before FROM parameterise the base
        for key, value in _arg(instructions[index]):
            variables[key] = build_args.get(key, value)
        index += 1
    base = expand(instructions[index].args.split()[0], variables)
    base_layout = _base_layout(base, store, cache_dir, progress)
    base_doc, base_layers, base_digest = read_layout(base_layout) if base_layout else ({"config": {}}, [], "scratch")
    ignore = _ignore_patterns(context)
    key = hashlib.sha256(json.dumps([BUILDER_VERSION, text, sorted(build_args.items()), base_digest, network,
                                     _context_digest(context, ignore)]).encode()).hexdigest()
    work = Path(tempfile.mkdtemp(prefix="build-", dir=_mkdir(cache_dir / "work")))
    root = work / "rootfs"
    root.mkdir()
    steps: list[str] = []
    try:
        if base_layout and any(i.keyword == "RUN" for i in instructions):
            _unpack_layers(base_layout, root)
        skeleton = _Skeleton(base_layout) if base_layout and not any(
            i.keyword == "RUN" for i in instructions) else None
        before = snapshot(root)
        base_cfg = dict(base_doc.get("config") or {})
        st = _State(variables={**variables}, env=list(base_cfg.get("Env") or []), config=base_cfg,
                    workdir=base_cfg.get("WorkingDir") or "/", user=base_cfg.get("User") or "")
        builder = _Builder(context, root, containerfile.name, network, progress, skeleton)
        body = instructions[index + 1:]
        for number, ins in enumerate(body, 1):
            if progress:
                progress("build", number, len(body), f"{ins.keyword} {ins.args[:60]}")
            steps.append(f"{ins.keyword} {ins.args}")
            _apply(builder, st, ins, build_args, ignore)
        builder.cleanup_mounts()
        changed, deleted = diff(before, snapshot(root))
        writer = LayoutWriter(dest)
        for layer in base_layers:
            writer.add_existing(layer)
        if changed or deleted:
            write_layer(root, changed, deleted, work / "layer.tar", owners=builder.owners)
            writer.add_layer_tar(work / "layer.tar")
        config = dict(st.config)
        config["Env"] = st.env
        if st.workdir != "/":
            config["WorkingDir"] = st.workdir
        if st.user:
            config["User"] = st.user
        if st.entrypoint_set and not st.cmd_set:
            config.pop("Cmd", None)  # Docker: a new ENTRYPOINT drops the base image's CMD
        config.setdefault("Labels", {})
        config["Labels"] = {k: v for k, v in config["Labels"].items() if k != "org.lightabaco.base"} or None
        if config["Labels"] is None:
            config.pop("Labels")
        history = [{"created_by": f"lightabaco build: {s[:200]}", "empty_layer": True} for s in steps]
        digest = writer.finish(config, ref=tag, history=history)
        return digest, key, steps
    finally:
        _force_rmtree(work)


def _arg(ins: Instruction) -> list[tuple[str, str]]:
    out = []
    for word in ins.args.split():
        name, _, default = word.partition("=")
        out.append((name, default.strip('"').strip("'")))
    return out


def _apply(builder: _Builder, st: _State, ins: Instruction, build_args: dict[str, str], ignore: list[str]) -> None:
    kw = ins.keyword
    if kw == "ARG":
        for name, default in _arg(ins):
            st.variables[name] = build_args.get(name, default)
    elif kw == "ENV":
        for name, value in key_values(ins.args, builder.source, ins.line):
            value = expand(value, {**st.variables, **dict(e.split("=", 1) for e in st.env if "=" in e)})
            st.env = [e for e in st.env if e.split("=", 1)[0] != name] + [f"{name}={value}"]
            st.variables[name] = value
    elif kw == "LABEL":
        labels = dict(st.config.get("Labels") or {})
        labels.update({k: expand(v, st.variables) for k, v in key_values(ins.args, builder.source, ins.line)})
        st.config["Labels"] = labels
    elif kw == "WORKDIR":
        path = expand(ins.args, st.variables)
        st.workdir = os.path.normpath(path if path.startswith("/") else os.path.join(st.workdir, path))
        builder.resolve(st.workdir).mkdir(parents=True, exist_ok=True)
    elif kw == "USER":
        st.user = expand(ins.args, st.variables)
    elif kw in ("COPY", "ADD"):
        builder.copy(st, ins, ignore)
    elif kw == "RUN":
        builder.run(st, ins)
    elif kw in ("CMD", "ENTRYPOINT"):
        argv = command(ins)
        st.config["Cmd" if kw == "CMD" else "Entrypoint"] = argv
        setattr(st, "cmd_set" if kw == "CMD" else "entrypoint_set", True)


def _force_rmtree(path: Path) -> None:
    def onerror(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    shutil.rmtree(path, onerror=onerror)


def _cache_record(cache_dir: Path, key: str) -> Path:
    return _mkdir(cache_dir / "builds") / f"{key}.json"


def build(context: Path, store: Store, *, cache_dir: Path, tag: str | None = None, file: str | None = None,
          build_args: dict[str, str] | None = None, network: str = "host", engine: str = "bwrap",
          progress: Progress | None = None, no_cache: bool = False) -> BuildResult:
    """Build the Containerfile in `context` into `store` (tagged `tag`) and return the image."""
    started = time.monotonic()
    context = Path(context)
    if not context.is_dir():
        raise BuildError(f"build context {context} is not a directory")
    if engine == "auto":
        engine = "bwrap" if shutil.which("bwrap") or not shutil.which("podman") else "podman"
    if engine == "podman":
        return _build_podman(context, store, cache_dir=cache_dir, tag=tag, file=file,
                             build_args=build_args, network=network, progress=progress, started=started)
    if engine != "bwrap":
        raise BuildError(f"unknown build engine {engine!r}: use bwrap, podman or auto")
    quick_key = _quick_key(context, file, build_args, network)
    record = _cache_record(cache_dir, quick_key) if quick_key else None
    if record and record.exists() and not no_cache:
        cached = json.loads(record.read_text())
        image = _cached_image(store, cached["digest"], tag)
        if image is not None:
            return BuildResult(image, cached["digest"], True, time.monotonic() - started, cached.get("steps", []))
    out = Path(tempfile.mkdtemp(prefix="layout-", dir=_mkdir(cache_dir / "work")))
    try:
        digest, _key, steps = build_layout(context, out, store, cache_dir, tag=tag, file=file,
                                           build_args=build_args, network=network, progress=progress)
        images = store.import_path(out, tag=tag, progress=progress)
    finally:
        _force_rmtree(out)
    image = next((i for i in images if i.config_digest == digest), images[0])
    if record:
        record.write_text(json.dumps({"digest": digest, "steps": steps, "tag": tag}))
    return BuildResult(image, digest, False, time.monotonic() - started, steps)


def _quick_key(context: Path, file: str | None, build_args: dict[str, str] | None, network: str) -> str | None:
    """A cache key computable without touching the base: only for bases whose identity is fixed by this
    host's inputs (built-in bases and scratch). Bases from a registry may move, so they always rebuild."""
    try:
        containerfile = find_containerfile(context.resolve(), file)
        text = containerfile.read_text()
        instructions = parse(text, containerfile.name)
    except BuildError:
        return None
    variables = {}
    index = 0
    while instructions[index].keyword == "ARG":
        for k, v in _arg(instructions[index]):
            variables[k] = (build_args or {}).get(k, v)
        index += 1
    base = expand(instructions[index].args.split()[0], variables)
    if base == "scratch":
        base_id = "scratch"
    elif bases.builtin_name(base) == bases.BUSYBOX:
        try:
            base_id = hashlib.sha256(bases.find_busybox().read_bytes()).hexdigest()
        except BuildError:
            return None
    elif bases.builtin_name(base) == bases.PYTHON:
        helper = (Path(bases.__file__).resolve().parent.parent / "actor.py").read_bytes()
        base_id = "python:" + hashlib.sha256(helper).hexdigest() + ":" + bases.BASES_VERSION
    else:
        return None
    ignore = _ignore_patterns(context.resolve())
    return hashlib.sha256(json.dumps([BUILDER_VERSION, text, sorted((build_args or {}).items()), base_id,
                                      network, _context_digest(context.resolve(), ignore)]).encode()).hexdigest()


def _cached_image(store: Store, digest: str, tag: str | None) -> PreparedImage | None:
    try:
        image = store.get(digest)
    except Exception:  # ImageNotFound, or a store that cannot look up by id: rebuild
        return None
    if image.config_digest != digest:
        return None
    if tag:
        try:
            current = store.get(tag)
        except Exception:
            current = None
        if current is None or current.config_digest != digest:
            store.tag(digest, tag)
            image = store.get(tag)
    return image


def _build_podman(context: Path, store: Store, *, cache_dir: Path, tag: str | None, file: str | None,
                  build_args: dict[str, str] | None, network: str, progress: Progress | None,
                  started: float) -> BuildResult:
    podman = shutil.which("podman")
    if not podman:
        raise BuildError("podman is not installed: `sudo apt-get install -y podman runc`, or use --engine bwrap")
    state = _mkdir(cache_dir / "podman")
    # podman refuses a runroot longer than 50 characters: keep it short, derived from the state dir.
    runroot = Path(tempfile.gettempdir()) / f"lab-pb-{os.getuid()}-{hashlib.sha256(str(state).encode()).hexdigest()[:8]}"
    base_argv = [podman, "--root", str(state / "root"), "--runroot", str(runroot)]
    if shutil.which("runc"):
        base_argv += ["--runtime", "runc"]  # crun fails on hybrid cgroup hosts (sandbox-notes §2)
    name = tag or "localhost/lightabaco-build:latest"
    argv = base_argv + ["build", "--isolation=chroot", "-t", name]
    if file:
        argv += ["-f", str(context / file)]
    for k, v in (build_args or {}).items():
        argv += ["--build-arg", f"{k}={v}"]
    if network == "none":
        argv += ["--network=none"]
    argv.append(str(context))
    if progress:
        progress("build", 0, None, "podman build")
    env = {**os.environ, "TMPDIR": str(_mkdir(state / "tmp"))}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BuildError(f"podman build failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
    archive = state / "tmp" / "image.tar"
    archive.unlink(missing_ok=True)
    proc = subprocess.run(base_argv + ["save", "--format", "oci-archive", "-o", str(archive), name],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise BuildError(f"podman save failed: {proc.stderr.strip()[-1000:]}")
    images = store.import_path(archive, tag=tag, progress=progress)
    archive.unlink(missing_ok=True)
    return BuildResult(images[0], images[0].config_digest, False, time.monotonic() - started, ["podman build"])
