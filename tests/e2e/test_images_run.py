"""Images from the store actually run under bubblewrap, also as another unprivileged uid."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from lightabaco.images import ImageStore
from tests.fixtures.oci import busybox_layout, tiny_actor_layout

pytestmark = pytest.mark.e2e
BWRAP = shutil.which("bwrap")
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed: apt-get install -y bubblewrap")


def bwrap_argv(rootfs: Path, *cmd: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [BWRAP or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", str(rootfs), "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *extra, *cmd]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A store location other uids can traverse (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="lightabaco-images-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(d)], check=False)
        shutil.rmtree(d, ignore_errors=True)


@needs_bwrap
def test_busybox_image_runs(busybox_image) -> None:  # type: ignore[no-untyped-def]
    c = busybox_image.config
    p = subprocess.run(bwrap_argv(busybox_image.rootfs, *c.cmd), capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stdout) == (0, "hello\n"), p.stderr


@needs_bwrap
def test_rootfs_runs_as_another_unprivileged_uid(shared_dir: Path) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root (to switch to uid 65534) and setpriv")
    store = ImageStore(shared_dir / "images")
    busybox_layout(shared_dir / "layout", script="#!/bin/sh\ncat /etc/passwd | wc -l\nls /app\nid -u\n",
                   files={"etc/motd": "private?"})
    (img,) = store.import_path(shared_dir / "layout", tag="bb-other-uid")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            *bwrap_argv(img.rootfs, *img.config.cmd)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["3", "run.sh", "65534"]


@needs_bwrap
def test_tiny_static_actor_contract(tiny_actor_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fifo, sock_path = tmp_path / "binary.fifo", tmp_path / "results.sock"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(5)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(b"BINARY-MESSAGE\n")

    threading.Thread(target=feed, daemon=True).start()
    extra = ("--ro-bind", str(fifo), "/_abaco_binary_data", "--ro-bind", str(sock_path), "/_abaco_results.sock")
    p = subprocess.run(bwrap_argv(tiny_actor_image.rootfs, *tiny_actor_image.config.entrypoint, extra=extra),
                       capture_output=True, timeout=30)
    assert p.returncode == 3, p.stderr
    assert p.stdout == b"BINARY-MESSAGE\nhello from tiny actor\n"
    assert sock.recv(65536) == b"tiny-actor-result"
    sock.close()


def test_tiny_actor_layout_is_tiny(tmp_path: Path) -> None:
    w = tiny_actor_layout(tmp_path / "l")
    elf = [data for data in w.raw_layers][0]
    assert len(elf) < 16 * 1024  # the whole layer tar, ELF included
