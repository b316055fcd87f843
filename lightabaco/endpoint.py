"""Where a running server listens, recorded in its home so the CLI on the same home finds it on any port.

    with published(settings.home, settings.host, settings.port):   # lightabaco.server.serve()
        server.run()
    find(home)  -> "http://127.0.0.1:9000", or None when no live server recorded itself there

The record is `<home>/run/server.json` = {"url", "pid", "started"}: written atomically (a temporary file
renamed over it) with mode 0644 (it holds no secret: the token stays in `<home>/token`), removed when the
server exits cleanly, and ignored when its pid no longer exists (a server killed with SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

RUN_FILE = Path("run") / "server.json"


def record_path(home: Path) -> Path:
    return Path(home) / RUN_FILE


def client_url(host: str, port: int) -> str:
    """The URL a client on this machine uses for a server bound to host:port (a wildcard bind is reached
    over loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def write(home: Path, url: str, pid: int | None = None) -> Path:
    """Record that the server with `pid` (default: this process) serves `url` for this home."""
    path = record_path(home)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    data = json.dumps({"url": url, "pid": pid or os.getpid(), "started": time.time()})
    fd, tmp = tempfile.mkstemp(prefix=".server-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(data + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # readers see the old record or the new one, never half of one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove(home: Path, pid: int | None = None) -> None:
    """Remove the record if it is this process's (a second server on the same home keeps its own)."""
    path = record_path(home)
    try:
        if json.loads(path.read_text()).get("pid") == (pid or os.getpid()):
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def find(home: Path) -> str | None:
    """The URL of the live server recorded in `home`, or None (no record, unreadable, or stale)."""
    try:
        data = json.loads(record_path(home).read_text())
        url, pid = data["url"], int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(url, str) or pid <= 0 or not _alive(pid):
        return None
    return url


@contextlib.contextmanager
def published(home: Path, host: str, port: int) -> Iterator[str]:
    """Record the server's address for the duration of the block; removed on the way out."""
    url = client_url(host, port)
    write(home, url)
    # uvicorn stops cleanly on SIGINT/SIGTERM, then re-raises the signal to the handler that was there
    # before it started, which by default ends the process before any `finally` runs: install one that
    # removes the record first, then lets the signal do what it did before.
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        remove(home)
        signal.signal(signum, previous[signum])
        signal.raise_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (tests): the finally below still covers normal exits
            break
    try:
        yield url
    finally:
        remove(home)
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler)
            except ValueError:
                pass
