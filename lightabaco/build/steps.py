"""Applying Containerfile instructions to a build tree: COPY/ADD, RUN in bubblewrap, config changes.

Helpers of builder.py. The tree holds base image content and earlier steps' output, so any of its
directories may be a symlink (to the host's `/`, say): every write goes through the chroot-safe walker
(lightabaco.sandbox.safepath, via tree.py) and the *at() calls on the directory fds it hands back, so a
link in the tree is followed only as the image would follow it, inside the tree.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lightabaco.sandbox.safepath import ERROR, UnsafePath, lstat_at, open_beneath, open_dir_at, remove_at
from lightabaco.sandbox.safepath import resolve_in_root as resolve_dir

from . import bases
from .tree import Skeleton, dir_in_tree, extract_archive, locate_in_tree, lookup_ids, tree_root
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
        # Mount points bwrap needs that the image lacked, and their parents' times: paths from the root.
        self.created_mounts: list[tuple[str, ...]] = []
        self.owners: dict[str, tuple[int, int]] = {}
        self.parent_times: dict[tuple[str, ...], tuple[int, int]] = {}
        self.prepare = skeleton.prepare if skeleton is not None else None

    def make_dir(self, path: str) -> None:
        """The directory `path` of the image, made with its parents when missing (WORKDIR, RUN's cwd)."""
        with tree_root(self.root) as rfd:
            fd, _ = dir_in_tree(rfd, path, prepare=self.prepare)
            os.close(fd)

    def ids(self, spec: str) -> tuple[int, int]:
        return lookup_ids(self.root, spec, self.prepare)

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
        with tree_root(self.root) as rfd:
            for match in matches:
                if ins.keyword == "ADD" and match.is_file() and match.name.endswith(_ARCHIVE_SUFFIXES):
                    self._extract(match, dest, ins, owner)
                    continue
                if to_dir:
                    dfd, dparts = dir_in_tree(rfd, dest, prepare=self.prepare)
                    try:
                        if match.is_dir():
                            self._copy_tree(match, dfd, dparts, owner, mode, ignore)
                        else:
                            self._copy_one(match, dfd, dparts, match.name, owner, mode)
                    finally:
                        os.close(dfd)
                    continue
                with locate_in_tree(rfd, dest, prepare=self.prepare) as entry:
                    there = entry.lstat()
                    if there is not None and stat.S_ISDIR(there.st_mode):
                        # `COPY file /existing-dir` (no trailing slash) copies into it, as Docker does.
                        dfd, dparts = resolve_dir(rfd, entry.parts, missing=ERROR)
                        try:
                            self._copy_one(match, dfd, dparts, match.name, owner, mode)
                        finally:
                            os.close(dfd)
                    else:
                        self._copy_one(match, entry.dir_fd, entry.dir_parts, entry.name, owner, mode)

    def _copy_tree(self, src: Path, dfd: int, dparts: list[str], owner: tuple[int, int] | None,
                   mode: int | None, ignore: list[str]) -> None:
        """The contents of the context directory `src` into the tree directory `dfd` (at `dparts`)."""
        for item in sorted(src.iterdir()):
            if ignored(item.relative_to(self.context).as_posix(), ignore):
                continue
            if item.is_dir() and not item.is_symlink():
                cfd = self._plain_dir(dfd, item.name)
                try:
                    self._copy_tree(item, cfd, dparts + [item.name], owner, mode, ignore)
                    info = item.stat()
                    os.fchmod(cfd, stat.S_IMODE(info.st_mode))  # after its contents: may be read-only
                    os.utime(cfd, ns=(info.st_atime_ns, info.st_mtime_ns))
                    self._own(dfd, dparts, item.name, owner)
                finally:
                    os.close(cfd)
            else:
                self._copy_one(item, dfd, dparts, item.name, owner, mode)

    @staticmethod
    def _plain_dir(dfd: int, name: str) -> int:
        """A real directory `name` in `dfd` (whatever else was there is removed, a link never followed)."""
        there = lstat_at(dfd, name)
        if there is not None and not stat.S_ISDIR(there.st_mode):
            remove_at(dfd, name)
            there = None
        if there is None:
            os.mkdir(name, 0o700, dir_fd=dfd)
        fd = open_dir_at(dfd, name)
        if os.getuid() != 0:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)  # writable while filled
        return fd

    def _copy_one(self, src: Path, dfd: int, dparts: list[str], name: str, owner: tuple[int, int] | None,
                  mode: int | None) -> None:
        """One context file or symlink as `name` in the tree directory `dfd` (replacing what is there)."""
        there = lstat_at(dfd, name)
        if there is not None:
            remove_at(dfd, name)
        if src.is_symlink():
            os.symlink(os.readlink(src), name, dir_fd=dfd)
        else:
            info = src.stat()
            with open(src, "rb") as source:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dfd)
                with os.fdopen(fd, "wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
                    handle.flush()
                    os.fchmod(fd, mode if mode is not None else stat.S_IMODE(info.st_mode))
                    os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
        self._own(dfd, dparts, name, owner)

    def _own(self, dfd: int, dparts: list[str], name: str, owner: tuple[int, int] | None) -> None:
        if os.getuid() == 0:
            # COPY without --chown gives root-owned files, as Docker does.
            os.chown(name, *(owner or (0, 0)), dir_fd=dfd, follow_symlinks=False)
        elif owner is not None:
            # Unprivileged builds cannot chown: the owner is written into the layer's tar headers instead.
            self.owners["/".join(dparts + [name])] = owner

    def _extract(self, archive: Path, dest: str, ins: Instruction, owner: tuple[int, int] | None) -> None:
        try:
            extract_archive(archive, self.root, dest, self.owners, chown=owner, prepare=self.prepare)
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
        self.make_dir(st.workdir)
        with tree_root(self.root) as rfd:
            for name in ("proc", "dev", "tmp"):
                if lstat_at(rfd, name) is None:
                    self._remember_parent(rfd, (name,))
                    os.mkdir(name, 0o755, dir_fd=rfd)
                    self.created_mounts.append((name,))
            resolv = self._resolv_conf(rfd) if self.network == "host" else None
            extra_env: dict[str, str] = {}
            trust = self._host_trust(rfd, extra_env) if self.network == "host" else []
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
        if resolv is not None:
            args += ["--ro-bind", "/etc/resolv.conf", resolv]
        args += trust
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

    def _remember_parent(self, root_fd: int, parts: tuple[str, ...]) -> None:
        if parts[:-1] not in self.parent_times:
            fd = open_beneath(root_fd, parts[:-1])
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            self.parent_times[parts[:-1]] = (st.st_atime_ns, st.st_mtime_ns)

    def _mount_file(self, root_fd: int, parts: tuple[str, ...]) -> bool:
        """An (empty) file at `parts` for bwrap to bind over, made if missing; False when something
        other than a regular file is there (a link bwrap would follow on the host: no bind then)."""
        try:
            fd, _ = resolve_dir(root_fd, list(parts[:-1]), missing=ERROR)
        except UnsafePath:
            return False
        try:
            there = lstat_at(fd, parts[-1])
            if there is not None:
                return stat.S_ISREG(there.st_mode)
            self._remember_parent(root_fd, parts)
            os.close(os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644, dir_fd=fd))
            self.created_mounts.append(parts)
            return True
        finally:
            os.close(fd)

    def _resolv_conf(self, root_fd: int) -> str | None:
        """Where to bind the host's resolv.conf for RUN with the host network (None: do not)."""
        if not Path("/etc/resolv.conf").exists():
            return None
        # /etc as the image resolves it (the bind target must be a path of real directories: bwrap
        # follows links on the host side), then a plain file there.
        try:
            fd, parts = resolve_dir(root_fd, ["etc"], missing=ERROR)
        except UnsafePath:
            return None
        os.close(fd)
        return "/" + "/".join(parts + ["resolv.conf"]) if self._mount_file(root_fd, (*parts, "resolv.conf")) \
            else None

    def _host_trust(self, root_fd: int, env: dict[str, str]) -> list[str]:
        """Let RUN reach package indexes the way the host does: the host's CA bundle (hosts behind a
        TLS-inspecting proxy add their CA there) and its proxy/pip index variables, as `docker build`
        passes proxy variables through."""
        for name in HOST_ENV_PASSTHROUGH:
            if os.environ.get(name):
                env[name] = os.environ[name]
        bundle = next((Path(os.environ[v]) for v in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
                       if os.environ.get(v) and Path(os.environ[v]).is_file()), Path(HOST_CA_BUNDLE))
        if not bundle.is_file():
            return []
        run = lstat_at(root_fd, "run")
        if run is None:
            self._remember_parent(root_fd, ("run",))
            os.mkdir("run", 0o755, dir_fd=root_fd)
            self.created_mounts.append(("run",))
        elif not stat.S_ISDIR(run.st_mode):
            return []  # a link (or a file): binding below it would follow it on the host
        if not self._mount_file(root_fd, ("run", "lightabaco-host-ca.crt")):
            return []
        for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
            env[name] = "/run/lightabaco-host-ca.crt"
        return ["--ro-bind", str(bundle), "/run/lightabaco-host-ca.crt"]

    def cleanup_mounts(self) -> None:
        # Mount points that bwrap needed but the image did not have: leave the image as it was, parent
        # directory times included, so they do not show up in the layer diff. RUN may have replaced any
        # of them (or a parent) by a link: fd-relative, nothing is followed.
        with tree_root(self.root) as rfd:
            for parts in reversed(self.created_mounts):
                try:
                    fd = open_beneath(rfd, parts[:-1])
                except (UnsafePath, OSError):
                    continue
                try:
                    there = lstat_at(fd, parts[-1])
                    if there is None:
                        continue
                    if stat.S_ISDIR(there.st_mode):
                        os.rmdir(parts[-1], dir_fd=fd)  # only when empty
                    elif stat.S_ISREG(there.st_mode) and there.st_size == 0:
                        os.unlink(parts[-1], dir_fd=fd)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            for parent, times in self.parent_times.items():
                try:
                    fd = open_beneath(rfd, parent)
                except (UnsafePath, OSError):
                    continue
                try:
                    os.utime(fd, ns=times)
                except OSError:
                    pass
                finally:
                    os.close(fd)
        self.created_mounts.clear()
        self.parent_times.clear()


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
        builder.make_dir(st.workdir)
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
