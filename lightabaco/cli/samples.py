"""The sample actor images (images/ in the source tree), built into an image store on first use.

`lightabaco serve` calls `ensure_samples(store, ...)` so that a fresh server can run the README's
walkthrough at once. The busybox samples take about a second; the Python ones need the offline Debian
base once (about half a minute with mmdebstrap, then cached under `<home>/build-cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lightabaco.build.builder import BuildResult, build
from lightabaco.build.containerfile import BuildError

IMAGES_DIR = Path(__file__).resolve().parents[2] / "images"  # the checkout's images/ (this file: lightabaco/cli/)
Progress = Callable[[str, int, "int | None", str], None]


@dataclass(frozen=True)
class Sample:
    directory: str  # under images/
    tags: tuple[str, ...]  # first tag is the one it is built as; the others are aliases
    python: bool  # needs the Debian+Python base
    summary: str


SAMPLES: tuple[Sample, ...] = (
    Sample("test", ("abacosamples/test",), False, "busybox: prints `Contents of MSG: ...` and its environment"),
    Sample("abaco_test", ("jstubbs/abaco_test", "jstubbs/abaco_test2"), False,
           "busybox: Abaco's test-suite actor (message, 2 s sleep, env, root listing, mounts)"),
    Sample("wc", ("abacosamples/wc",), True, "python: counts the words of the message, returns the count"),
    Sample("py3_func", ("abacosamples/py3_func", "abacosamples/py3_func_v3"), True,
           "python: runs a cloudpickled {func, args, kwargs}, returns the value"),
    Sample("sleep_loop", ("abacosamples/sleep_loop",), True,
           "python: {\"iterations\": N, \"sleep\": S} prints each iteration"),
    Sample("classify", ("lightabaco/classify",), True,
           "python: binary PNG/PPM in, JSON result out (size, mean colour, brightness)"),
)
# Built on request only (needs PyPI during the build): an actor using unmodified tapipy.actors.
EXTRA_SAMPLES: tuple[Sample, ...] = (
    Sample("tapipy_actor", ("lightabaco/tapipy_actor",), True, "python: uses tapipy.actors helpers"),
)


def sample_by_name(name: str) -> Sample:
    for sample in SAMPLES + EXTRA_SAMPLES:
        if name in (sample.directory, *sample.tags):
            return sample
    known = ", ".join(s.directory for s in SAMPLES + EXTRA_SAMPLES)
    raise KeyError(f"no sample called {name!r}; samples are: {known}")


def build_sample(sample: Sample, store: Any, cache_dir: Path, progress: Progress | None = None,
                 images_dir: Path | None = None) -> BuildResult:
    """Build one sample and tag it with all its names."""
    context = (images_dir or IMAGES_DIR) / sample.directory
    if not context.is_dir():
        raise BuildError(f"the sample build context {context} is missing: the samples ship with the source "
                         "tree, so install lightabaco from a checkout (`pip install -e .`, as scripts/serve.sh "
                         "does) or pass --no-samples")
    result = build(context, store, cache_dir=cache_dir, tag=sample.tags[0], progress=progress)
    for alias in sample.tags[1:]:
        try:
            current = store.get(alias)
        except Exception:  # not there yet
            current = None
        if current is None or current.config_digest != result.config_digest:
            store.tag(sample.tags[0], alias)
    return result


def ensure_samples(store: Any, progress: Progress | None = None, *, cache_dir: Path | None = None,
                   python: bool = True, images_dir: Path | None = None) -> dict[str, BuildResult]:
    """Build (or find cached) every sample image in `store`; returns {first tag: result}.

    `cache_dir` defaults to `build-cache` next to the store's directory (`<home>/build-cache`).
    `python=False` skips the samples that need the Debian+Python base (for hosts without a mirror).
    """
    if cache_dir is None:
        root = getattr(store, "root", None)
        if root is None:
            raise ValueError("pass cache_dir: the image store does not say where it lives")
        cache_dir = Path(root).parent / "build-cache"
    results: dict[str, BuildResult] = {}
    chosen = [s for s in SAMPLES if python or not s.python]
    for number, sample in enumerate(chosen, 1):
        if progress:
            progress("sample", number - 1, len(chosen), sample.tags[0])
        results[sample.tags[0]] = build_sample(sample, store, cache_dir, progress, images_dir)
    if progress:
        progress("sample", len(chosen), len(chosen), "samples ready")
    return results
