"""Who runs where: the actor's uid/gid inside the sandbox, and the host user that runs the sandbox.

Inside: the image's USER (Abaco's use_container_uid), looked up in the image's own /etc/passwd and
/etc/group, or an explicit uid/gid, or DEFAULT_UID/DEFAULT_GID. The image files are read with every
path component opened O_NOFOLLOW below the rootfs, so a hostile image cannot point /etc/passwd at a
host file.

Outside: bwrap run by root would map sandbox uid 0 to host root and keep capabilities unless told
otherwise (sandbox-notes §5.1). So when lightabaco itself runs as root, the sandbox runtime runs as a
dedicated unprivileged host user instead: $LIGHTABACO_SANDBOX_USER, else a system user
`lightabaco-sbx` (created on first use), else `nobody`.
"""

from __future__ import annotations

import functools
import logging
import os
import pwd
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import ExecutionSetupError
from .types import ExecSpec

log = logging.getLogger(__name__)

DEFAULT_UID = 1000
DEFAULT_GID = 1000
SANDBOX_USER_ENV = "LIGHTABACO_SANDBOX_USER"
DEFAULT_SANDBOX_USER = "lightabaco-sbx"
_MAX_DB_BYTES = 4 << 20


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    home: str  # HOME for the actor when the image Env has none


def read_image_file(rootfs: Path, relpath: str) -> bytes | None:
    """Read a regular file inside an image rootfs without following any symlink (None if absent,
    a symlink, or not a regular file)."""
    parts = [p for p in relpath.split("/") if p and p != "."]
    if not parts or ".." in parts:
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dfd = os.open(rootfs, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            try:
                nfd = os.open(part, flags | os.O_DIRECTORY, dir_fd=dfd)
            except OSError:
                return None
            os.close(dfd)
            dfd = nfd
        try:
            fd = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=dfd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not (st.st_mode & 0o170000 == 0o100000) or st.st_size > _MAX_DB_BYTES:
                return None
            return os.read(fd, _MAX_DB_BYTES)
        finally:
            os.close(fd)
    finally:
        os.close(dfd)


def _entries(rootfs: Path, relpath: str) -> list[list[str]]:
    data = read_image_file(rootfs, relpath)
    if data is None:
        return []
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]


def resolve_image_user(rootfs: Path, user: str) -> Identity:
    """Docker semantics for an image USER: "", "uid", "uid:gid", "name", "name:group"."""
    name, _, group = user.partition(":")
    passwd = _entries(rootfs, "etc/passwd")
    if not name:
        return Identity(0, 0, "/root")
    entry = None
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if len(e) >= 6 and e[2] == name), None)
    else:
        entry = next((e for e in passwd if len(e) >= 6 and e[0] == name), None)
        if entry is None:
            raise ExecutionSetupError(
                f"the image's USER {user!r} names user {name!r}, which is not in the image's "
                "/etc/passwd; fix the image or run the actor with an explicit uid"
            )
        uid = int(entry[2])
    gid = int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    home = entry[5] if entry is not None and entry[5] else "/"
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gentry = next((e for e in _entries(rootfs, "etc/group") if len(e) >= 3 and e[0] == group),
                          None)
            if gentry is None or not gentry[2].isdigit():
                raise ExecutionSetupError(
                    f"the image's USER {user!r} names group {group!r}, which is not in the image's "
                    "/etc/group; fix the image or run the actor with an explicit gid"
                )
            gid = int(gentry[2])
    return Identity(uid, gid, home)


def sandbox_identity(spec: ExecSpec) -> Identity:
    """The uid/gid the actor runs as inside the sandbox."""
    if spec.uid_gid is not None:
        uid, gid = spec.uid_gid
        return Identity(int(uid), int(gid), _home_for(spec.image.rootfs, int(uid)))
    if spec.use_image_user:
        return resolve_image_user(spec.image.rootfs, spec.image.config.user)
    return Identity(DEFAULT_UID, DEFAULT_GID, _home_for(spec.image.rootfs, DEFAULT_UID))


@functools.lru_cache(maxsize=256)
def _home_for(rootfs: Path, uid: int) -> str:
    # Cached: a prepared rootfs is immutable (keyed by digest), and this runs on every execution.
    entry = next((e for e in _entries(rootfs, "etc/passwd") if len(e) >= 6 and e[2] == str(uid)), None)
    return entry[5] if entry and entry[5] else "/"


@dataclass(frozen=True)
class HostUser:
    name: str
    uid: int
    gid: int


_host_user_lock = threading.Lock()
_host_user_cache: dict[str, HostUser] = {}


def sandbox_host_user() -> HostUser | None:
    """The unprivileged host user to run sandboxes as, or None when we are not root (run as self)."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get(SANDBOX_USER_ENV) or DEFAULT_SANDBOX_USER
    with _host_user_lock:
        if wanted not in _host_user_cache:
            _host_user_cache[wanted] = _find_or_create(wanted)
        return _host_user_cache[wanted]


def _find_or_create(name: str) -> HostUser:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        pw = None
        if name == DEFAULT_SANDBOX_USER and shutil.which("useradd"):
            proc = subprocess.run(
                ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                 "--shell", "/usr/sbin/nologin", "--user-group", name],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode not in (0, 9):  # 9 = exists (another process raced us)
                log.warning("cannot create sandbox user %s: %s", name, proc.stderr.strip(),
                            extra={"action": "sandbox-user"})
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                pw = None
        if pw is None:
            if name != DEFAULT_SANDBOX_USER:
                raise ExecutionSetupError(
                    f"{SANDBOX_USER_ENV}={name} names no user on this host; create it "
                    f"(useradd --system {name}) or unset the variable"
                ) from None
            pw = pwd.getpwnam("nobody")
    assert pw is not None
    if pw.pw_uid == 0:
        raise ExecutionSetupError(
            f"the sandbox user {name} is root; set {SANDBOX_USER_ENV} to an unprivileged user"
        )
    return HostUser(pw.pw_name, pw.pw_uid, pw.pw_gid)


def check_reachable_by(path: Path, user: HostUser) -> None:
    """Fail early, and say how to fix it, when the sandbox user cannot reach a path bwrap binds.

    bwrap 0.8 resolves even `--ro-bind-fd` sources back to a path and opens that path as the
    sandbox user, so every ancestor directory must be searchable by that user. Successful checks
    are remembered (this runs on every execution as root); failures are re-checked each time.
    """
    _check_reachable(Path(os.path.abspath(path)), user)


@functools.lru_cache(maxsize=1024)
def _check_reachable(path: Path, user: HostUser) -> None:
    for part in [*reversed(path.parents), path]:
        try:
            st = part.stat()
        except OSError as exc:
            raise ExecutionSetupError(f"{part} cannot be inspected ({exc.strerror}); check the path") from exc
        if st.st_uid == user.uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == user.gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            raise ExecutionSetupError(
                f"the sandbox user {user.name} cannot reach {path}: {part} is not searchable by it "
                f"(mode {st.st_mode & 0o777:o}). lightabaco runs as root, so sandboxes run as "
                f"{user.name}; put the lightabaco home somewhere it can reach (e.g. "
                f"--home /var/lib/lightabaco) or `chmod o+x {part}`"
            )
