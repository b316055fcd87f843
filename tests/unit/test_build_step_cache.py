"""The step cache: each build step keyed on its parent, its instruction and the files it reads, so that
changing CMD or a late COPY does not re-run earlier RUN steps (issue 10: 34 s for a CMD change)."""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from lightabaco.build.builder import build_layout
from lightabaco.build.oci_write import read_layout

pytestmark = pytest.mark.skipif(not shutil.which("bwrap"), reason="RUN needs bubblewrap")


class NoStore:
    def get(self, ref):
        raise AssertionError(f"unexpected store lookup {ref}")

    ensure = get


# The RUN step records when it ran: a re-run writes a different stamp.
HEAD = "FROM lightabaco/busybox\nCOPY early.txt /early.txt\nRUN cat /proc/sys/kernel/random/uuid > /stamp && rm /etc/group\n"


def _build(tmp_path: Path, name: str, containerfile: str, files: dict[str, str]) -> dict[str, bytes | None]:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(containerfile)
    for file, text in files.items():
        (ctx / file).write_text(text)
    out = tmp_path / name
    started = time.monotonic()
    build_layout(ctx, out, NoStore(), tmp_path / "cache", network="none")
    document, layers, _ = read_layout(out)
    found: dict[str, bytes | None] = {"config": json.dumps(document["config"]).encode(),
                                      "seconds": str(time.monotonic() - started).encode()}
    with tarfile.open(layers[-1].blob) as tar:
        for member in tar:
            found[member.name] = tar.extractfile(member).read() if member.isreg() else None
    return found


def test_changing_only_cmd_reuses_the_run_step(tmp_path: Path):
    first = _build(tmp_path, "a", HEAD + 'CMD ["one"]\n', {"early.txt": "e"})
    second = _build(tmp_path, "b", HEAD + 'CMD ["two"]\n', {"early.txt": "e"})
    assert first["stamp"] == second["stamp"]
    assert b'"two"' in second["config"] and b'"one"' not in second["config"]
    assert "etc/.wh.group" in second and second["early.txt"] == b"e"


def test_a_late_copy_change_resumes_after_the_run(tmp_path: Path):
    tail = "COPY late.txt /late.txt\n"
    first = _build(tmp_path, "a", HEAD + tail, {"early.txt": "e", "late.txt": "1"})
    second = _build(tmp_path, "b", HEAD + tail, {"early.txt": "e", "late.txt": "2"})
    assert first["stamp"] == second["stamp"] and second["late.txt"] == b"2"
    assert "etc/.wh.group" in second  # the deletion the cached RUN made is still in the image


def test_a_file_read_before_the_run_invalidates_it(tmp_path: Path):
    first = _build(tmp_path, "a", HEAD, {"early.txt": "e"})
    second = _build(tmp_path, "b", HEAD, {"early.txt": "changed"})
    assert first["stamp"] != second["stamp"] and second["early.txt"] == b"changed"


def test_changing_the_run_itself_reruns_it(tmp_path: Path):
    first = _build(tmp_path, "a", HEAD, {"early.txt": "e"})
    second = _build(tmp_path, "b", HEAD.replace("rm /etc/group", "rm /etc/passwd"), {"early.txt": "e"})
    assert first["stamp"] != second["stamp"] and "etc/.wh.passwd" in second
