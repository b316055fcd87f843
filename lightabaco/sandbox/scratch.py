"""Per-execution scratch directories: created, locked while in use, removed after, GC'd after crashes.

Two places, because creating files on the home's filesystem is what an execution cost most:

    <root>/                            the scratch root given to the backend (e.g. $LIGHTABACO_HOME/exec)
        logs/<execution-id>.log        default place of the execution's log (kept; the caller owns it)
        <execution-id>.binary-data     a binary message too large to hand over in memory
        podman/                        the podman backend's private HOME, config and storage
    <run>/                             a private directory on tmpfs (/dev/shm/lightabaco-<uid>/<hash>),
        <execution-id>/                one per running execution, flock()ed while it runs
            results.sock               the results socket, bound at /_abaco_results.sock

Why tmpfs for the per-execution directory: perf showed ext4's inode allocator
(find_inode_bit/recently_deleted) as the largest single cost of an execution when thousands of
directories and sockets are created and deleted per minute (about 0.5 ms per created inode on this
VM), and homes on NFS (HPC) make sockets and churn worse still. A socket needs no space, so a small
/dev/shm is fine. When no private tmpfs directory can be made safely (missing /dev/shm, or someone
else owns the name), everything stays under <root>.

Several worker processes share one root, so "stale" cannot mean "not mine": an execution directory
is stale when nobody holds its lock, which is exactly the case after a crash (the kernel drops flocks
of dead processes), and it is older than STALE_GRACE_S (another process may be between mkdir and
flock). That makes collect_stale() safe to call from any process at any time. The lock is on the
directory itself, not on a lock file, to create one inode fewer.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
import time
import uuid
from pathlib import Path

from .errors import ExecutionSetupError
from .fsutil import force_rmtree

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
LOGS_DIR = "logs"
BINARY_SUFFIX = ".binary-data"
# Names under the scratch root that are not execution directories (podman keeps its state here).
RESERVED = frozenset({LOGS_DIR, "podman"})
STALE_GRACE_S = 30.0
TMPFS_BASE = Path("/dev/shm")


def new_execution_id() -> str:
    return uuid.uuid4().hex[:16]


def check_execution_id(execution_id: str) -> str:
    """Execution ids become file names and host names: allow only a safe alphabet."""
    if not _ID_RE.match(execution_id) or execution_id in RESERVED:
        raise ExecutionSetupError(
            f"execution id {execution_id!r} is not usable as a file name: use 1-100 letters, digits, "
            "'_', '.' or '-', starting with a letter or digit"
        )
    return execution_id


def _private_dir(path: Path, mode: int) -> bool:
    """Create `path` (one level) or accept it if it is already ours: a real directory owned by us
    that nobody else can write. False if it cannot be trusted or made."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return False
    current = stat.S_IMODE(st.st_mode)
    if current & mode != mode:  # only ever add the search bits another backend may need
        os.chmod(path, current | mode)
    return True


def runtime_dir_for(root: Path, mode: int) -> Path | None:
    """A private tmpfs directory for the execution directories of `root`, or None."""
    if not TMPFS_BASE.is_dir() or not os.access(TMPFS_BASE, os.W_OK | os.X_OK):
        return None
    tag = hashlib.sha256(os.fsencode(os.path.abspath(root))).hexdigest()[:12]
    top = TMPFS_BASE / f"lightabaco-{os.geteuid()}"
    run = top / tag
    if _private_dir(top, mode) and _private_dir(run, mode):
        return run
    return None


class ExecDir:
    """One execution's scratch directory, locked for as long as this object is open."""

    def __init__(self, path: Path, lock_fd: int, binary_path: Path) -> None:
        self.path = path
        self.binary_path = binary_path  # where a large binary message goes (on the scratch root)
        self._lock_fd = lock_fd

    def remove(self) -> None:
        force_rmtree(self.path)
        try:
            os.unlink(self.binary_path)
        except FileNotFoundError:
            pass
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock after the directory is gone
            self._lock_fd = -1


class Scratch:
    """The scratch root shared by all executions of one lightabaco home."""

    def __init__(self, root: Path, traversable: bool = False, use_tmpfs: bool = True) -> None:
        self.root = Path(root)
        # When the sandbox runs as another host user (lightabaco runs as root), that user must
        # search (not list) the directories on the way to each socket: mode 0711 instead of 0700.
        self.dir_mode = 0o711 if traversable else 0o700
        self.use_tmpfs = use_tmpfs
        self.run_root = self.root

    def ensure(self) -> None:
        try:
            (self.root / LOGS_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, self.dir_mode)
        except OSError as exc:
            raise ExecutionSetupError(
                f"cannot create the scratch directory {self.root}: {exc.strerror}; "
                "choose a writable --home or fix its permissions"
            ) from exc
        if self.use_tmpfs:
            self.run_root = runtime_dir_for(self.root, self.dir_mode) or self.root

    def default_log_path(self, execution_id: str) -> Path:
        return self.root / LOGS_DIR / f"{execution_id}.log"

    def create(self, execution_id: str) -> ExecDir:
        check_execution_id(execution_id)
        path = self.run_root / execution_id
        try:
            try:
                path.mkdir(mode=0o700)
            except FileNotFoundError:  # the root was removed under us: recreate it once
                self.ensure()
                path = self.run_root / execution_id
                path.mkdir(mode=0o700)
            if self.dir_mode != 0o700:
                os.chmod(path, self.dir_mode)
        except FileExistsError:
            raise ExecutionSetupError(
                f"execution {execution_id} already has a scratch directory {path}: "
                "execution ids must be unique; retry with a new id"
            ) from None
        except OSError as exc:
            raise ExecutionSetupError(f"cannot create {path}: {exc.strerror}") from exc
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return ExecDir(path, fd, self.root / f"{execution_id}{BINARY_SUFFIX}")

    def collect_stale(self) -> list[str]:
        """Remove what executions left behind when their process died; return their names."""
        removed: list[str] = []
        roots = [self.root] if self.run_root == self.root else [self.run_root, self.root]
        for root in roots:
            try:
                entries = list(os.scandir(root))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name in RESERVED or not entry.is_dir(follow_symlinks=False):
                    continue
                if self._is_unlocked(Path(entry.path)):
                    force_rmtree(Path(entry.path))
                    removed.append(entry.name)
        removed += self._collect_binary_files()
        return removed

    def _collect_binary_files(self) -> list[str]:
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if not entry.name.endswith(BINARY_SUFFIX) or not entry.is_file(follow_symlinks=False):
                continue
            owner = self.run_root / entry.name[: -len(BINARY_SUFFIX)]
            try:
                old = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_GRACE_S
            except FileNotFoundError:
                continue
            if old and (not owner.exists() or self._is_unlocked(owner)):
                try:
                    os.unlink(entry.path)
                    removed.append(entry.name)
                except FileNotFoundError:
                    pass
        return removed

    @staticmethod
    def _is_unlocked(path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            if time.time() - os.fstat(fd).st_mtime < STALE_GRACE_S:
                return False
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        finally:
            os.close(fd)
        return True
