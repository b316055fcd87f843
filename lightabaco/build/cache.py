"""The builder's step cache: each step keyed on its inputs, as `docker build` keys its layers.

A step's key is the hash of its parent step's key, the instruction as written and the bytes of the
context files it reads (COPY/ADD sources); the first parent is the base image, the build arguments and
the network mode. So changing `CMD`, or a late `COPY`, leaves the keys of the earlier steps unchanged.

After a RUN (the slow steps), and after the last step that changes files, the builder saves a
checkpoint under `<cache>/steps/<key>/`: the tree's difference from the base as one layer tar (with
whiteouts), the build state (env, workdir, user, config) and the owners an unprivileged build recorded.
A later build resumes from the latest checkpoint its keys reach: when that checkpoint is after every
file-changing step, the image is assembled from the base layers and the cached layer without laying
out a tree at all; otherwise the base is laid out, the cached layer applied, and the build continues.

Helpers of build.py (standard library only, like the rest of the sandbox package).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .steps import BuildState, apply, ignored
from .containerfile import BuildError, Instruction, expand, sources_and_dest
from lightabaco.sandbox.fsutil import force_rmtree
from .oci_write import diff, snapshot, write_layer

STEP_CACHE_VERSION = "1"
FILE_STEPS = ("RUN", "COPY", "ADD", "WORKDIR")  # the steps that change the tree


def _sha(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def hash_context_entry(digest: Any, path: Path, rel: str) -> None:
    """Add one build-context entry to `digest`: its relative name and mode, then its link target or
    its bytes (read in 1 MiB pieces, so a large context file is never held in memory whole)."""
    st = path.lstat()
    digest.update(f"{rel}\0{st.st_mode:o}\0".encode())
    if path.is_symlink():
        digest.update(os.readlink(path).encode())
    elif path.is_file():
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)


def _files_digest(context: Path, ins: Instruction, variables: dict[str, str], source: str,
                  ignore: list[str]) -> str:
    """The bytes, names and modes of what a COPY/ADD reads from the context."""
    digest = hashlib.sha256()
    try:
        sources, _dest = sources_and_dest(ins, source)
    except BuildError:
        return "invalid"  # the step itself will report it
    for src in sources:
        digest.update(f"src\0{src}\0".encode())
        for found in sorted(glob.glob(str(context / expand(src, variables)))):
            top = Path(found)
            for path in [top, *sorted(top.rglob("*"))] if top.is_dir() and not top.is_symlink() else [top]:
                try:
                    rel = path.relative_to(context).as_posix()
                except ValueError:
                    continue  # outside the context: the step refuses it
                if ignored(rel, ignore):
                    continue
                hash_context_entry(digest, path, rel)
    return digest.hexdigest()


def step_keys(body: list[Instruction], state: BuildState, build_args: dict[str, str], context: Path,
              source: str, ignore: list[str], parent: str) -> list[str]:
    """One key per instruction of `body` (the instructions after FROM). `state` is not changed: ARG and
    ENV are replayed on a copy, since COPY sources may name their variables."""
    dry = dataclasses.replace(state, variables=dict(state.variables), env=list(state.env),
                              config=dict(state.config))
    stub = SimpleNamespace(source=source)
    keys = []
    key = parent
    for ins in body:
        files = ""
        if ins.keyword in ("COPY", "ADD"):
            files = _files_digest(context, ins, dry.variables, source, ignore)
        elif ins.keyword in ("ARG", "ENV"):
            apply(stub, dry, ins, build_args, ignore)  # type: ignore[arg-type]
        key = _sha(key, ins.keyword, ins.args, sorted(ins.flags.items()), files)
        keys.append(key)
    return keys


def first_key(base_digest: str, build_args: dict[str, str], network: str, ignore: list[str],
              builder_version: str) -> str:
    return _sha(builder_version, STEP_CACHE_VERSION, base_digest, sorted(build_args.items()), network, ignore)


def checkpoint_steps(body: list[Instruction]) -> set[int]:
    """Indexes (into body) after which a checkpoint is worth saving: each RUN and the last file step."""
    marks = {i for i, ins in enumerate(body) if ins.keyword == "RUN"}
    file_steps = [i for i, ins in enumerate(body) if ins.keyword in FILE_STEPS]
    if file_steps:
        marks.add(file_steps[-1])
    return marks


def last_file_step(body: list[Instruction]) -> int:
    return max((i for i, ins in enumerate(body) if ins.keyword in FILE_STEPS), default=-1)


@dataclasses.dataclass
class Checkpoint:
    index: int
    state: BuildState
    owners: dict[str, tuple[int, int]]
    layer: Path | None  # None: the steps so far changed nothing


class StepCache:
    def __init__(self, cache_dir: Path):
        self.dir = cache_dir / "steps"

    def find(self, keys: list[str], marks: set[int]) -> Checkpoint | None:
        """The latest checkpoint among `marks` that this build's keys reach."""
        for index in sorted(marks, reverse=True):
            entry = self.dir / keys[index]
            try:
                record = json.loads((entry / "state.json").read_text())
            except (OSError, ValueError):
                continue
            layer = entry / "layer.tar" if record.get("layer") else None
            if layer is not None and not layer.is_file():
                continue
            try:
                os.utime(entry)  # recently used: pruning by age keeps it
            except OSError:
                pass
            owners = {k: (int(v[0]), int(v[1])) for k, v in record.get("owners", {}).items()}
            return Checkpoint(index, BuildState(**record["state"]), owners, layer)
        return None

    def save(self, key: str, root: Path, before: dict, state: BuildState,
             owners: dict[str, tuple[int, int]]) -> None:
        """Record the tree's difference from the base (`before`) and the state, after a step."""
        entry = self.dir / key
        if (entry / "state.json").exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".step-", dir=self.dir))
        try:
            changed, deleted = diff(before, snapshot(root))
            if changed or deleted:
                write_layer(root, changed, deleted, tmp / "layer.tar", owners=owners)
            record = {"state": dataclasses.asdict(state), "owners": owners, "layer": bool(changed or deleted)}
            (tmp / "state.json").write_text(json.dumps(record))
            os.rename(tmp, entry)
        except OSError:
            force_rmtree(tmp, ignore_errors=True)  # a full disk costs the cache entry, not the build

    def prune(self) -> int:
        """Remove every checkpoint; returns the bytes freed."""
        freed = 0
        if not self.dir.is_dir():
            return 0
        for entry in self.dir.iterdir():
            for path in entry.rglob("*") if entry.is_dir() else [entry]:
                try:
                    freed += path.lstat().st_size
                except OSError:
                    pass
            force_rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        return freed


def apply_layer(layer: Path, root: Path) -> None:
    """Lay a checkpoint's layer (written by this module) over the base tree: files, then whiteouts."""
    with tarfile.open(layer) as tar:
        whiteouts = [m.name for m in tar if os.path.basename(m.name).startswith(".wh.")]
    argv = ["tar", "-xpf", str(layer), "-C", str(root), "--numeric-owner"]
    if os.getuid() != 0:
        argv.append("--no-same-owner")
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"cannot apply the cached build step: {proc.stderr.strip()[:300]}; "
                         "rebuild with --no-cache")
    for name in whiteouts:
        parent, _, base = name.rpartition("/")
        victim = root / parent / base[len(".wh."):]
        if victim.is_dir() and not victim.is_symlink():
            shutil.rmtree(victim, ignore_errors=True)
        elif victim.exists() or victim.is_symlink():
            victim.unlink()
        (root / name).unlink(missing_ok=True)
