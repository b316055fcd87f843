"""Progress bars for long operations (pull, unpack, import, build) on a terminal; silence in pipes.

The image store and the builder report through `progress(event, done, total, detail)`; this turns those
calls into one redrawn line on stderr. `make_progress()` returns None when stderr is not a terminal, so
scripts and CI logs get no carriage-return noise.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

ProgressFn = Callable[[str, int, "int | None", str], None]
_BYTE_EVENTS = {"pull", "unpack"}  # events whose counts are bytes


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class ProgressBar:
    """Renders progress events as `event  [#####.....]  45%  12.0 MB/27.0 MB  detail` on one line."""

    def __init__(self, stream: TextIO, width: int = 28, min_interval_s: float = 0.1):
        self.stream, self.width, self.min_interval_s = stream, width, min_interval_s
        self._last_draw = 0.0
        self._last_event = ""
        self._line_len = 0

    def __call__(self, event: str, done: int, total: int | None, detail: str) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if event == self._last_event and not finished and now - self._last_draw < self.min_interval_s:
            return  # redraw at most ten times a second
        if event != self._last_event and self._line_len:
            self.stream.write("\n")  # keep the finished line of the previous phase visible
            self._line_len = 0
        self._last_event, self._last_draw = event, now
        self._draw(self.render(event, done, total, detail))

    def render(self, event: str, done: int, total: int | None, detail: str) -> str:
        fmt = _human if event in _BYTE_EVENTS else str
        if total:
            fraction = min(max(done / total, 0.0), 1.0)
            filled = int(fraction * self.width)
            bar = "#" * filled + "." * (self.width - filled)
            counts = f"{fmt(done)}/{fmt(total)}"
            return f"{event:8} [{bar}] {fraction * 100:3.0f}%  {counts}  {detail[:50]}"
        return f"{event:8} {fmt(done) if done else ''}  {detail[:70]}"

    def _draw(self, line: str) -> None:
        pad = max(self._line_len - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._line_len = len(line)

    def close(self) -> None:
        if self._line_len:
            self.stream.write("\n")
            self.stream.flush()
            self._line_len = 0


def make_progress(stream: TextIO | None = None, force: bool = False) -> ProgressBar | None:
    """A ProgressBar on stderr when it is a terminal (or `force`), else None (quiet)."""
    stream = stream or sys.stderr
    if force or (hasattr(stream, "isatty") and stream.isatty()):
        return ProgressBar(stream)
    return None
