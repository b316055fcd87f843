"""An image imported into the real image store runs under the bwrap backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightabaco.sandbox.types import ExecSpec, Limits

pytestmark = pytest.mark.e2e


@pytest.fixture
def store(sandbox_dir: Path):  # -> ImageStore
    from lightabaco.images import ImageStore

    return ImageStore(sandbox_dir / "images")


def test_busybox_layout_from_the_store_runs(store, bwrap_backend, sandbox_dir):
    from tests.fixtures.oci import busybox_layout

    script = ("#!/bin/sh\necho \"msg=$MSG user=$(id -u) pwd=$(pwd)\"\ncat /_abaco_binary_data\n"
              "echo; touch /app/x 2>&1\nexit 5\n")
    busybox_layout(sandbox_dir / "layout", script=script, config={"WorkingDir": "/app"})
    (image,) = store.import_path(sandbox_dir / "layout", tag="sbx/store-test:1")
    res = bwrap_backend.run(ExecSpec(image=image, env={"MSG": "from-store"}, binary_message=b"bin",
                                     limits=Limits(wall_timeout_s=20)))
    text = Path(res.log_path).read_text()
    assert res.exit_code == 5, text
    assert "msg=from-store user=1000 pwd=/app" in text and "bin" in text
    assert "Read-only file system" in text
    assert not (Path(image.rootfs) / "app" / "x").exists()


def test_tiny_static_actor_from_the_store(store, bwrap_backend, sandbox_dir):
    from tests.fixtures.oci import tiny_actor_layout

    tiny_actor_layout(sandbox_dir / "tiny")
    (image,) = store.import_path(sandbox_dir / "tiny", tag="sbx/tiny:1")
    res = bwrap_backend.run(ExecSpec(image=image, binary_message=b"BINARY-MESSAGE\n",
                                     limits=Limits(wall_timeout_s=20)))
    assert res.exit_code == 3
    assert Path(res.log_path).read_bytes() == b"BINARY-MESSAGE\nhello from tiny actor\n"
    assert res.results == [b"tiny-actor-result"]
