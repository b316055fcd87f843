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
base's image ID: a second build of the same inputs only re-tags. Each step is also cached on its own
inputs (cache.py), so a build that changes only late steps (CMD, a last COPY) reuses the RUN
steps before them.

With `engine="podman"` podman builds instead (`podman build --isolation=chroot`, private storage under
the cache directory) and its `oci-archive` is imported the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Protocol

from . import bases
from .cache import (StepCache, apply_layer, checkpoint_steps, first_key, hash_context_entry, last_file_step,
                    step_keys)
from .podman import build_podman
from .results import BuildResult, Progress, Store
from .steps import BuildState, TreeBuilder, apply, arg_defaults, ignore_patterns, ignored
from .tree import Skeleton, resolve_in_root, unpack_layers
from lightabaco.sandbox.fsutil import force_rmtree
from .containerfile import BuildError, expand, find_containerfile, parse
from .oci_write import LayoutWriter, config_from_image, diff, flatten_to_layout, read_layout, snapshot, write_layer
from lightabaco.sandbox.types import PreparedImage

__all__ = ["BuildError", "BuildResult", "build", "build_layout", "resolve_in_root"]
BUILDER_VERSION = "1"


def _context_digest(context: Path, ignore: list[str]) -> str:
    digest = hashlib.sha256()
    for path in sorted(context.rglob("*")):
        rel = path.relative_to(context).as_posix()
        if ignored(rel, ignore):
            continue
        hash_context_entry(digest, path, rel)
    return digest.hexdigest()


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


STALE_WORK_S = 6 * 3600


def _clean_stale_work(cache_dir: Path) -> None:
    # A build killed half-way leaves its working tree behind; anything this old is nobody's any more.
    work = cache_dir / "work"
    if not work.is_dir():
        return
    cutoff = time.time() - STALE_WORK_S
    for entry in work.iterdir():
        try:
            if entry.lstat().st_mtime < cutoff:
                force_rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:
            pass


def build_layout(context: Path, dest: Path, store: Store, cache_dir: Path, *, tag: str | None = None,
                 file: str | None = None, build_args: dict[str, str] | None = None, network: str = "host",
                 progress: Progress | None = None, no_cache: bool = False) -> tuple[str, str, list[str]]:
    """Build `context` into an OCI layout at `dest`; returns (config digest, cache key, step log).
    Steps whose inputs did not change since an earlier build come from the step cache (cache.py)
    unless `no_cache`."""
    context = context.resolve()
    containerfile = find_containerfile(context, file)
    text = containerfile.read_text()
    instructions = parse(text, containerfile.name)
    build_args = dict(build_args or {})
    variables: dict[str, str] = {}
    index = 0
    while instructions[index].keyword == "ARG":  # ARGs before FROM parameterise the base
        for key, value in arg_defaults(instructions[index]):
            variables[key] = build_args.get(key, value)
        index += 1
    base = expand(instructions[index].args.split()[0], variables)
    base_layout = _base_layout(base, store, cache_dir, progress)
    base_doc, base_layers, base_digest = read_layout(base_layout) if base_layout else ({"config": {}}, [], "scratch")
    ignore = ignore_patterns(context)
    key = hashlib.sha256(json.dumps([BUILDER_VERSION, text, sorted(build_args.items()), base_digest, network,
                                     _context_digest(context, ignore)]).encode()).hexdigest()
    body = instructions[index + 1:]
    base_cfg = dict(base_doc.get("config") or {})
    st = BuildState(variables={**variables}, env=list(base_cfg.get("Env") or []), config=base_cfg,
                    workdir=base_cfg.get("WorkingDir") or "/", user=base_cfg.get("User") or "")
    has_run = any(i.keyword == "RUN" for i in body)
    # Builds without RUN take milliseconds (Skeleton): only builds with RUN use the step cache.
    step_cache = StepCache(cache_dir) if base_layout and has_run else None
    keys = step_keys(body, st, build_args, context, containerfile.name, ignore,
                     first_key(base_digest, build_args, network, ignore, BUILDER_VERSION)) if step_cache else []
    marks = checkpoint_steps(body)
    resume = step_cache.find(keys, marks) if step_cache and not no_cache else None
    steps = [f"{ins.keyword} {ins.args}" for ins in body]
    if resume is not None and resume.index >= last_file_step(body):
        # Every step that changes files is cached: assemble the image without laying out a tree.
        st = resume.state
        stub = SimpleNamespace(source=containerfile.name)
        for number, ins in enumerate(body, 1):
            if progress:
                progress("build", number, len(body), ("cached " if number - 1 <= resume.index else "")
                         + f"{ins.keyword} {ins.args[:60]}")
            if number - 1 > resume.index:
                apply(stub, st, ins, build_args, ignore)  # type: ignore[arg-type]  # config only
        writer = LayoutWriter(dest)
        for layer in base_layers:
            writer.add_existing(layer)
        if resume.layer is not None:
            writer.add_layer_tar(resume.layer, move=False)
        return _finish(writer, st, steps, tag), key, steps
    work = Path(tempfile.mkdtemp(prefix="build-", dir=_mkdir(cache_dir / "work")))
    root = work / "rootfs"
    root.mkdir()
    try:
        if base_layout and has_run:
            unpack_layers(base_layout, root)
        skeleton = Skeleton(base_layout) if base_layout and not has_run else None
        before = snapshot(root)
        builder = TreeBuilder(context, root, containerfile.name, network, progress, skeleton)
        start = 0
        if resume is not None:
            if resume.layer is not None:
                apply_layer(resume.layer, root)
            st, builder.owners, start = resume.state, dict(resume.owners), resume.index + 1
        for number, ins in enumerate(body, 1):
            cached = number - 1 < start
            if progress:
                progress("build", number, len(body), ("cached " if cached else "") + f"{ins.keyword} {ins.args[:60]}")
            if cached:
                continue
            apply(builder, st, ins, build_args, ignore)
            if step_cache is not None and number - 1 in marks:
                builder.cleanup_mounts()
                step_cache.save(keys[number - 1], root, before, st, builder.owners)
        builder.cleanup_mounts()
        changed, deleted = diff(before, snapshot(root))
        writer = LayoutWriter(dest)
        for layer in base_layers:
            writer.add_existing(layer)
        if changed or deleted:
            write_layer(root, changed, deleted, work / "layer.tar", owners=builder.owners)
            writer.add_layer_tar(work / "layer.tar")
        return _finish(writer, st, steps, tag), key, steps
    finally:
        force_rmtree(work, ignore_errors=True)


def _finish(writer: LayoutWriter, st: BuildState, steps: list[str], tag: str | None) -> str:
    """The image config from the build state; writes the layout's config and manifest."""
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
    return writer.finish(config, ref=tag, history=history)


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
        return build_podman(context, store, cache_dir=cache_dir, tag=tag, file=file,
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
    _clean_stale_work(cache_dir)
    out = Path(tempfile.mkdtemp(prefix="layout-", dir=_mkdir(cache_dir / "work")))
    try:
        digest, _key, steps = build_layout(context, out, store, cache_dir, tag=tag, file=file,
                                           build_args=build_args, network=network, progress=progress,
                                           no_cache=no_cache)
        images = store.import_path(out, tag=tag, progress=progress)
    finally:
        force_rmtree(out, ignore_errors=True)
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
        for k, v in arg_defaults(instructions[index]):
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
        base_id = ("python:" + hashlib.sha256(helper).hexdigest() + ":" + bases.BASES_VERSION + ":"
                   + bases.PYTHON_LAYOUT_VERSION)
    else:
        return None
    ignore = ignore_patterns(context.resolve())
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
