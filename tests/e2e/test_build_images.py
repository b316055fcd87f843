"""`lightabaco images build` end to end: Containerfile → OCI layout → image store → bubblewrap run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from lightabaco.sandbox.backend import get_backend, run
from lightabaco.build.bases import find_busybox
from lightabaco.build.builder import build
from lightabaco.build.containerfile import BuildError
from lightabaco.images import ImageStore
from lightabaco.sandbox.types import ExecSpec, Limits
from tests.fixtures.samples import reachable_tmpdir

pytestmark = pytest.mark.e2e


@pytest.fixture
def workspace():
    base = reachable_tmpdir("lightabaco-build-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def store(workspace):
    return ImageStore(workspace / "images")


def _ctx(workspace: Path, containerfile: str, files: dict[str, str] | None = None, name: str = "ctx") -> Path:
    ctx = workspace / name
    ctx.mkdir()
    (ctx / "Containerfile").write_text(containerfile)
    for rel, text in (files or {}).items():
        (ctx / rel).write_text(text)
    return ctx


def _run(workspace: Path, image, **env):
    backend = get_backend("bwrap", scratch=workspace / "exec")
    result = run(backend, ExecSpec(image=image, env=env, limits=Limits(wall_timeout_s=30)))
    return result, result.log_path.read_text()


def test_config_is_honoured_at_run_time(workspace, store, build_cache_dir):
    ctx = _ctx(workspace, """FROM lightabaco/busybox
ENV GREETING=hello
WORKDIR /srv/app
COPY --chown=app:app show.sh ./
RUN chmod 755 show.sh && echo "made at build time" > /srv/app/stamp
USER app
ENTRYPOINT ["/srv/app/show.sh"]
CMD ["first-arg"]
""", {"show.sh": '#!/bin/sh\necho "$GREETING from $(pwd) as $(id -u) with $1"; cat stamp\n'})
    result = build(ctx, store, cache_dir=build_cache_dir, tag="test/show", network="none")
    assert not result.cached
    image = store.get("test/show")
    assert image.config.user == "app" and image.config.working_dir == "/srv/app"
    ran, log = _run(workspace, image)
    assert ran.exit_code == 0, log
    assert "hello from /srv/app as 1000 with first-arg" in log and "made at build time" in log


def test_second_build_is_cached_and_instant(workspace, store, build_cache_dir):
    ctx = _ctx(workspace, "FROM lightabaco/busybox\nCOPY a.txt /a.txt\nCMD [\"cat\", \"/a.txt\"]\n",
               {"a.txt": f"unique {time.time()}"})
    first = build(ctx, store, cache_dir=build_cache_dir, tag="test/cached", network="none")
    started = time.monotonic()
    second = build(ctx, store, cache_dir=build_cache_dir, tag="test/cached-too", network="none")
    assert second.cached and second.config_digest == first.config_digest
    assert time.monotonic() - started < 1.0
    assert store.get("test/cached-too").config_digest == first.config_digest
    (ctx / "a.txt").write_text("changed")
    third = build(ctx, store, cache_dir=build_cache_dir, tag="test/cached", network="none")
    assert not third.cached and third.config_digest != first.config_digest
    assert _run(workspace, store.get("test/cached"))[1] == "changed"


def test_build_on_an_image_from_the_store(workspace, store, build_cache_dir):
    base_ctx = _ctx(workspace, "FROM lightabaco/busybox\nRUN echo base > /base.txt\n", name="base")
    build(base_ctx, store, cache_dir=build_cache_dir, tag="test/base", network="none")
    ctx = _ctx(workspace, "FROM test/base\nRUN rm /base.txt && echo child > /child.txt\n"
                          "CMD [\"sh\", \"-c\", \"ls /base.txt 2>&1; cat /child.txt\"]\n", name="child")
    build(ctx, store, cache_dir=build_cache_dir, tag="test/child", network="none")
    ran, log = _run(workspace, store.get("test/child"))
    assert "No such file" in log and "child" in log  # the deletion became a whiteout over the base


def test_failing_run_leaves_nothing_behind(workspace, store, build_cache_dir):
    ctx = _ctx(workspace, "FROM lightabaco/busybox\nRUN false\n")
    with pytest.raises(BuildError, match="RUN false failed with exit status 1"):
        build(ctx, store, cache_dir=build_cache_dir, tag="test/fails", network="none")
    assert not any((build_cache_dir / "work").glob("build-*/rootfs/bin"))


def test_podman_engine_when_podman_works(workspace, store, build_cache_dir):
    from lightabaco.sandbox.podman import probe_podman

    if not shutil.which("podman") or not probe_podman().usable:
        pytest.skip("podman is not installed or not usable here")
    ctx = _ctx(workspace, "FROM scratch\nCOPY busybox /bin/busybox\n"
                          "RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
                          "CMD [\"/bin/sh\", \"-c\", \"echo built by podman\"]\n")
    shutil.copy(find_busybox(), ctx / "busybox")
    try:
        result = build(ctx, store, cache_dir=workspace / "podman-cache", tag="test/podman", engine="podman")
    except BuildError as exc:
        pytest.skip(f"podman build does not work on this host: {str(exc)[:300]}")
    ran, log = _run(workspace, store.get("test/podman"))
    assert result.config_digest.startswith("sha256:") and "built by podman" in log


def test_base_image_is_pulled_from_a_registry(workspace, store, build_cache_dir, registry):
    from tests.fixtures.oci import busybox_layout

    registry.push_image(busybox_layout(), "team/base", "1")
    ctx = _ctx(workspace, f"FROM {registry.ref('team/base', '1')}\nRUN echo on-top > /top.txt\n"
                          "CMD [\"cat\", \"/top.txt\"]\n")
    build(ctx, store, cache_dir=build_cache_dir, tag="test/pulled-base", network="none")
    assert store.get(registry.ref("team/base", "1")).config_digest.startswith("sha256:")  # pulled on the way
    assert _run(workspace, store.get("test/pulled-base"))[1] == "on-top\n"
