"""Child processes that cannot outlive the server (issue 9: no orphans, ever).

Every process the supervisor starts (runner processes of the pool, pull processes) is tied to the
process that started it in two ways:

1. `PR_SET_PDEATHSIG` = SIGKILL, set as the child's first act. The kernel then kills the child when
   its parent dies, however the parent dies (SIGKILL, OOM killer, a crash).
2. A parent check right after that: a parent that died *before* the prctl (the window between fork and
   the child's first instruction of Python) is not signalled, but the child is then re-parented, so its
   parent pid is no longer the one the supervisor wrote into its environment: the child exits. The same
   check runs periodically in the worker loop, so even a lost signal cannot leave a worker behind for
   more than a second or two.

The child's environment also carries `LIGHTABACO_SERVER_HOME` (the server's home), a marker by which
an operator (or a test) finds every process of one server, sandboxes included.

Standard library only, and imported first by the child modules, so the window stays short.
"""

from __future__ import annotations

import ctypes
import os
import signal

PARENT_ENV = "LIGHTABACO_PARENT_PID"
MARKER_ENV = "LIGHTABACO_SERVER_HOME"
_PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 70  # the parent was gone before we could tie ourselves to it


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent (thread) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def child_env(env: dict[str, str], home: str) -> dict[str, str]:
    """`env` plus what a child needs to check its parent and to be found as this server's."""
    out = dict(env)
    out[PARENT_ENV] = str(os.getpid())
    out[MARKER_ENV] = str(home)
    return out


def expected_parent() -> int | None:
    value = os.environ.get(PARENT_ENV, "")
    return int(value) if value.isdigit() else None


def parent_alive() -> bool:
    """False once the process that started us is gone (we were re-parented)."""
    parent = expected_parent()
    return parent is None or os.getppid() == parent


def tie_to_parent() -> None:
    """The child's first act: die with the parent, and exit now if it is already gone."""
    set_pdeathsig(signal.SIGKILL)
    if not parent_alive():
        os._exit(EXIT_ORPHANED)
