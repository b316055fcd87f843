"""The reverse of lightabaco.actor: an actor that imports the helpers from unmodified tapipy (installed
from PyPI by a RUN step of its Containerfile) runs under lightabaco and its helpers work."""

from __future__ import annotations

import pickle
import shutil

import pytest

from lightabaco.cli.samples import build_sample, sample_by_name
from lightabaco.sandbox.backend import get_backend, run
from lightabaco.build.containerfile import BuildError
from lightabaco.images import ImageStore
from lightabaco.sandbox.types import ExecSpec, Limits
from tests.fixtures.samples import reachable_tmpdir, test_cache_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def tapipy_image():
    store = ImageStore(test_cache_dir() / "samples-store")
    try:
        build_sample(sample_by_name("tapipy_actor"), store, test_cache_dir() / "build-cache")
    except BuildError as exc:
        if "Could not find a version" in str(exc) or "Network is unreachable" in str(exc):
            pytest.skip(f"PyPI is not reachable from build sandboxes here: {str(exc)[-300:]}")
        raise
    return store.get("lightabaco/tapipy_actor")


def test_tapipy_helpers_work_inside_lightabaco(tapipy_image):
    scratch = reachable_tmpdir("lightabaco-tapipy-")
    try:
        backend = get_backend("bwrap", scratch=scratch)
        env = {"MSG": str({"greeting": "hi"}), "_abaco_Content-Type": "application/json",
               "_abaco_Content_Type": "application/json", "_abaco_execution_id": "EX1", "_abaco_actor_id": "AC1"}
        result = run(backend, ExecSpec(image=tapipy_image, env=env, limits=Limits(wall_timeout_s=120)))
        log = result.log_path.read_text()
        assert result.exit_code == 0, log
        assert "tapipy context: execution EX1 message_dict {'greeting': 'hi'}" in log
        assert result.results[0] == b"tapipy saw 0 binary bytes and message \"{'greeting': 'hi'}\""
        assert pickle.loads(result.results[1]) == {"message_dict": {"greeting": "hi"}, "actor_id": "AC1"}

        env = {"_abaco_Content-Type": "application/octet-stream", "_abaco_execution_id": "EX2"}
        result = run(backend, ExecSpec(image=tapipy_image, env=env, binary_message=b"\x00" * 100_000,
                                       limits=Limits(wall_timeout_s=120)))
        assert result.exit_code == 0, result.log_path.read_text()
        assert result.results[0].startswith(b"tapipy saw 100000 binary bytes")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
