"""Per-execution scratch directories: created under one root, locked while in use, removed after.

Layout under the scratch root (e.g. `$LIGHTABACO_HOME/exec`):

    <root>/<execution-id>/         one directory per running execution (mode 0700), flock()ed by the
                                   process running the execution for as long as it runs
        results.sock               the results datagram socket, bound at /_abaco_results.sock
        binary_data                the binary message, when too large to hand over in memory
    <root>/logs/<execution-id>.log default place of the execution's log (kept; the caller owns it)
    <root>/podman/                 the podman backend's private HOME, config and storage

Several worker processes share one root, so "stale" cannot mean "not mine": a directory is stale
when nobody holds its lock, which is exactly the case after a crash (the kernel drops flocks of dead
processes), and it is older than STALE_GRACE_S (another process may be between mkdir and flock).
That makes collect_stale() safe to call from any process at any time. The lock is on the directory
itself, not on a lock file: every file created per execution costs an inode allocation, which on
ext4 under churn was the largest single cost of an execution (measured with perf).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import time
import uuid
from pathlib import Path

from .errors import ExecutionSetupError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
LOGS_DIR = "logs"
# Names under the scratch root that are not execution directories (podman keeps its state here).
RESERVED = frozenset({LOGS_DIR, "podman"})
STALE_GRACE_S = 30.0


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


def force_rmtree(path: Path) -> None:
    """rmtree that first makes read-only directories writable (tests and images create some)."""

    def onerror(func, failed, exc_info):  # type: ignore[no-untyped-def]
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
            func(failed)
        except FileNotFoundError:
            pass

    if path.exists() or path.is_symlink():
        shutil.rmtree(path, onerror=onerror)


class ExecDir:
    """One execution's scratch directory, locked for as long as this object is open."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    def remove(self) -> None:
        force_rmtree(self.path)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock after the directory is gone
            self._lock_fd = -1


class Scratch:
    """The scratch root shared by all executions of one lightabaco home."""

    def __init__(self, root: Path, traversable: bool = False) -> None:
        self.root = Path(root)
        # When the sandbox runs as another host user (lightabaco runs as root), that user must
        # search (not list) the root and each execution directory: mode 0711 instead of 0700.
        self.dir_mode = 0o711 if traversable else 0o700

    def ensure(self) -> None:
        try:
            (self.root / LOGS_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, self.dir_mode)
        except OSError as exc:
            raise ExecutionSetupError(
                f"cannot create the scratch directory {self.root}: {exc.strerror}; "
                "choose a writable --home or fix its permissions"
            ) from exc

    def default_log_path(self, execution_id: str) -> Path:
        return self.root / LOGS_DIR / f"{execution_id}.log"

    def create(self, execution_id: str) -> ExecDir:
        check_execution_id(execution_id)
        path = self.root / execution_id
        try:
            try:
                path.mkdir(mode=0o700)
            except FileNotFoundError:  # the root was removed under us: recreate it once
                self.ensure()
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
        return ExecDir(path, fd)

    def collect_stale(self) -> list[str]:
        """Remove scratch directories of executions whose process is gone; return their names."""
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return removed
        for entry in entries:
            if entry.name in RESERVED or not entry.is_dir(follow_symlinks=False):
                continue
            if self._is_unlocked(Path(entry.path)):
                force_rmtree(Path(entry.path))
                removed.append(entry.name)
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
