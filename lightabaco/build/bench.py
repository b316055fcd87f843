"""Benchmark of `lightabaco images build`, side by side with `podman build` when podman works here.

    python -m lightabaco.build.bench [--cache DIR] [--runs 3]

Prints one table: building a busybox sample cold and cached, a Python sample without RUN (skeleton
base) and with RUN (the base laid out in full), each with lightabaco's builder and, where podman is
usable, with `podman build` of the same context. `--cache` reuses a build cache that already holds the
Debian base (otherwise it is made first with mmdebstrap, and that time is shown too).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from .bases import find_busybox, python_layout
from .builder import build
from .containerfile import BuildError
from lightabaco.images import ImageStore

BUSYBOX_CONTEXT = {"Containerfile": 'FROM lightabaco/busybox\nCOPY run.sh /run.sh\nRUN chmod 755 /run.sh\n'
                                    'CMD ["/run.sh"]\n',
                   "run.sh": '#!/bin/sh\necho "Contents of MSG: $MSG"\n'}
PODMAN_BUSYBOX_CONTEXT = {"Containerfile": 'FROM scratch\nCOPY busybox /bin/busybox\n'
                                           'RUN ["/bin/busybox", "--install", "-s", "/bin"]\nCOPY run.sh /run.sh\n'
                                           'RUN chmod 755 /run.sh\nCMD ["/run.sh"]\n',
                          "run.sh": BUSYBOX_CONTEXT["run.sh"]}
PYTHON_COPY_CONTEXT = {"Containerfile": 'FROM lightabaco/python\nCOPY app.py /app.py\nCMD ["python3", "/app.py"]\n',
                       "app.py": 'print("hello")\n'}
PYTHON_RUN_CONTEXT = {"Containerfile": 'FROM lightabaco/python\nCOPY app.py /app.py\n'
                                       'RUN python3 -m py_compile /app.py\nCMD ["python3", "/app.py"]\n',
                      "app.py": 'print("hello")\n'}


def _context(base: Path, files: dict[str, str], name: str) -> Path:
    ctx = base / name
    ctx.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (ctx / rel).write_text(text)
    return ctx


def _timed(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightabaco.build.bench")
    parser.add_argument("--cache", type=Path, help="build cache to reuse (holds the Debian base)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lightabaco-build-bench-", dir="/tmp"))
    work.chmod(0o711)
    cache = args.cache or work / "cache"
    rows: list[tuple[str, float | None, float | None]] = []
    try:
        started = time.perf_counter()
        python_layout(cache)
        base_s = time.perf_counter() - started
        rows.append(("Debian+Python base (mmdebstrap, once)" if base_s > 1 else "Debian+Python base (cached)",
                     base_s, None))
        podman_ok = shutil.which("podman") is not None
        counter = iter(range(10_000))

        def fresh_store() -> ImageStore:
            return ImageStore(work / f"store-{next(counter)}")

        bb = _context(work, BUSYBOX_CONTEXT, "bb")
        rows.append(("busybox sample, cold (no build cache)",
                     _timed(lambda: build(bb, fresh_store(), cache_dir=work / f"c-{next(counter)}",
                                          tag="bench/bb", network="none"), args.runs),
                     _podman(work, args.runs) if podman_ok else None))
        store = fresh_store()
        build(bb, store, cache_dir=cache, tag="bench/bb", network="none")
        rows.append(("busybox sample, cached rebuild",
                     _timed(lambda: build(bb, store, cache_dir=cache, tag="bench/bb", network="none"), args.runs),
                     None))
        for label, files in (("python sample, COPY only (skeleton base)", PYTHON_COPY_CONTEXT),
                             ("python sample, with RUN (full base layout)", PYTHON_RUN_CONTEXT)):
            ctx = _context(work, files, label.split(",")[1].strip().split()[0])
            rows.append((label, _timed(lambda: build(ctx, fresh_store(), cache_dir=cache, tag="bench/py",
                                                     network="none", no_cache=True), args.runs), None))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"{'case':{width}}  {'lightabaco build':>16}  {'podman build':>12}")
    for label, ours, theirs in rows:
        print(f"{label:{width}}  {_fmt(ours):>16}  {_fmt(theirs):>12}")
    print(f"(median of {args.runs} runs; builds include importing into a fresh image store)")
    return 0


def _podman(work: Path, runs: int) -> float | None:
    ctx = _context(work, PODMAN_BUSYBOX_CONTEXT, "podman-bb")
    shutil.copy(find_busybox(), ctx / "busybox")
    counter = iter(range(10_000))
    try:
        return _timed(lambda: build(ctx, ImageStore(work / f"pstore-{next(counter)}"),
                                    cache_dir=work / f"pc-{next(counter)}", tag="bench/podman", engine="podman"),
                      runs)
    except BuildError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
