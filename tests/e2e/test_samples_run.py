"""Each sample image behaves as the Abaco test suites expect (spec §9.1), run through the real sandbox."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import cloudpickle
import pytest

from lightabaco.sandbox.backend import get_backend, run
from lightabaco.sandbox.types import ExecSpec, Limits
from tests.fixtures.samples import reachable_tmpdir

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def backend():
    scratch = reachable_tmpdir("lightabaco-samples-exec-")
    yield get_backend("bwrap", scratch=scratch)
    shutil.rmtree(scratch, ignore_errors=True)


def _run(backend, sample_images, ref: str, env=None, binary=None, timeout=60.0):
    image = sample_images.store.get(ref)
    result = run(backend, ExecSpec(image=image, env=env or {}, binary_message=binary,
                                   limits=Limits(wall_timeout_s=timeout)))
    return result, result.log_path.read_text(errors="replace")


def test_test_actor_prints_message_and_environment(backend, sample_images):
    result, log = _run(backend, sample_images, "abacosamples/test",
                       {"MSG": "testing execution", "_abaco_actor_id": "A1", "_abaco_Content_Type": "str"})
    assert result.exit_code == 0
    assert "Contents of MSG: testing execution" in log
    for name in ("PATH", "_abaco_actor_id", "_abaco_Content_Type"):
        assert name in log


def test_abaco_test_actor_lists_root_and_mounts(backend, sample_images):
    result, log = _run(backend, sample_images, "jstubbs/abaco_test2", {"MSG": "m", "ABACO_TEST_SLEEP": "0"})
    assert result.exit_code == 0
    assert "Contents of MSG: m" in log and "Contents of root:" in log and "_abaco_results.sock" in log


def test_wc_counts_words_and_returns_the_count(backend, sample_images):
    result, log = _run(backend, sample_images, "abacosamples/wc", {"MSG": "the quick brown fox"})
    assert result.exit_code == 0, log
    assert "Number of words: 4" in log
    assert result.results == [b"4"]


def test_py3_func_runs_a_pickled_function(backend, sample_images):
    def power(base, exponent=2):
        return {"value": base ** exponent}

    message = cloudpickle.dumps({"func": power, "args": [3], "kwargs": {"exponent": 4}})
    result, log = _run(backend, sample_images, "abacosamples/py3_func", binary=message)
    assert result.exit_code == 0, log
    assert [pickle.loads(r) for r in result.results] == [{"value": 81}]


def test_py3_func_returns_the_exception_of_failing_code(backend, sample_images):
    def broken():
        raise ValueError("nope")

    result, log = _run(backend, sample_images, "abacosamples/py3_func",
                       binary=cloudpickle.dumps({"func": broken, "args": [], "kwargs": {}}))
    assert result.exit_code == 1 and "ValueError: nope" in log
    assert isinstance(pickle.loads(result.results[0]), ValueError)


def test_sleep_loop_prints_each_iteration(backend, sample_images):
    result, log = _run(backend, sample_images, "abacosamples/sleep_loop",
                       {"MSG": str({"iterations": 3, "sleep": 0.05})})
    assert result.exit_code == 0, log
    assert [line for line in log.splitlines() if line.startswith("Iteration")] == \
        ["Iteration 1 of 3", "Iteration 2 of 3", "Iteration 3 of 3"]


def _png(width: int, height: int, rgb: tuple[int, int, int], filter_type: int = 1) -> bytes:
    # Encode with a real PNG filter so the decoder's unfiltering is exercised, not just filter 0.
    rows = []
    for _ in range(height):
        line = bytes(rgb) * width
        if filter_type == 1:  # Sub: each byte minus the byte one pixel to the left
            line = bytes((line[i] - (line[i - 3] if i >= 3 else 0)) & 0xFF for i in range(len(line)))
        rows.append(bytes([filter_type]) + line)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows))) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("image,brightness,dominant,size", [
    (_png(16, 8, (240, 240, 250)), "bright", "grey", (16, 8)),
    (_png(5, 5, (20, 30, 200)), "dark", "blue", (5, 5)),
    (b"P6 2 2 255\n" + bytes([30, 200, 30] * 4), "medium", "green", (2, 2)),
])
def test_classify_answers_from_the_pixels(backend, sample_images, image, brightness, dominant, size):
    result, log = _run(backend, sample_images, "lightabaco/classify",
                       {"_abaco_Content_Type": "application/octet-stream"}, binary=image)
    assert result.exit_code == 0, log
    answer = json.loads(result.results[0])
    assert (answer["brightness"], answer["dominant"], answer["width"], answer["height"]) == \
        (brightness, dominant, *size)


def test_classify_rejects_non_images_with_a_result(backend, sample_images):
    result, log = _run(backend, sample_images, "lightabaco/classify", binary=b"GIF89a....")
    assert result.exit_code == 1 and "cannot classify" in log
    assert "error" in json.loads(result.results[0])


def test_images_carry_the_helper_module(backend, sample_images):
    image = sample_images.store.get("abacosamples/wc")
    helper = image.rootfs / "usr/lib/python3/dist-packages/lightabaco/actor.py"
    assert helper.read_bytes() == (Path(__file__).resolve().parents[2] / "lightabaco/actor.py").read_bytes()
