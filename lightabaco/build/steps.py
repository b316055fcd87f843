"""Applying Containerfile instructions to a build tree: COPY/ADD, RUN in bubblewrap, config changes.

Helpers of build.py (standard library only, like the rest of the sandbox package).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import bases
from .tree import Skeleton, extract_archive, lookup_ids, resolve_in_root
from .containerfile import BuildError, Instruction, command, expand, key_values, sources_and_dest

Progress = Callable[[str, int, "int | None", str], None]
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HOST_ENV_PASSTHROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                        "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")


@dataclass
class BuildState:
    variables: dict[str, str]
    env: list[str]
    config: dict[str, Any]
    workdir: str = "/"
    user: str = ""
    entrypoint_set: bool = False
    cmd_set: bool = False


def ignore_patterns(context: Path) -> list[str]:
    for name in (".containerignore", ".dockerignore"):
        path = context / name
        if path.is_file():
            return [line.strip().strip("/") for line in path.read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    return []


def ignored(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) or rel.startswith(p + "/") for p in patterns)


class TreeBuilder:
    def __init__(self, context: Path, root: Path, source: str, network: str, progress: Progress | None,
                 skeleton: Skeleton | None = None):
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
            for name in Skeleton.ACCOUNT_FILES:
                self.skeleton.ensure(self.root, "/" + name)
        return lookup_ids(self.root, spec)

    def where(self, instruction: Instruction) -> str:
        return f"{self.source}:{instruction.line}"

    # -- COPY / ADD ------------------------------------------------------------------------------
    def copy(self, st: BuildState, ins: Instruction, ignore: list[str]) -> None:
        sources, dest = sources_and_dest(ins, self.source)
        dest = expand(dest, st.variables)
        if not dest.startswith("/"):
            dest = os.path.join(st.workdir, dest)
        matches: list[Path] = []
        context_real = self.context.resolve()
        for src in sources:
            found = sorted(glob.glob(str(self.context / expand(src, st.variables)), recursive=False))
            found = [f for f in found if not ignored(Path(f).relative_to(self.context).as_posix(), ignore)]
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
                self._extract(match, dest, ins, owner)
                continue
            target_dir = self.resolve(dest) if to_dir else self.resolve(os.path.dirname(dest) or "/")
            target_dir.mkdir(parents=True, exist_ok=True)
            if match.is_dir():
                for item in sorted(match.rglob("*")):
                    rel = item.relative_to(match)
                    if ignored(item.relative_to(self.context).as_posix(), ignore):
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

    def _extract(self, archive: Path, dest: str, ins: Instruction, owner: tuple[int, int] | None) -> None:
        ensure = (lambda path: self.skeleton.ensure(self.root, path)) if self.skeleton is not None else None
        try:
            extract_archive(archive, self.root, dest, self.owners, chown=owner, ensure=ensure)
        except BuildError as exc:
            raise BuildError(f"{self.where(ins)}: ADD {exc}") from None

    # -- RUN -------------------------------------------------------------------------------------
    def run(self, st: BuildState, ins: Instruction) -> str:
        argv = command(ins)
        if not argv:
            raise BuildError(f"{self.where(ins)}: RUN needs a command")
        bwrap = shutil.which("bwrap")
        if not bwrap:
            raise BuildError("RUN needs bubblewrap: `sudo apt-get install -y bubblewrap` (or --engine podman)")
        uid, gid = lookup_ids(self.root, st.user) if st.user else (0, 0)
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
        extra_env: dict[str, str] = {}
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


def arg_defaults(ins: Instruction) -> list[tuple[str, str]]:
    out = []
    for word in ins.args.split():
        name, _, default = word.partition("=")
        out.append((name, default.strip('"').strip("'")))
    return out


def apply(builder: TreeBuilder, st: BuildState, ins: Instruction, build_args: dict[str, str],
          ignore: list[str]) -> None:
    kw = ins.keyword
    if kw == "ARG":
        for name, default in arg_defaults(ins):
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
