"""The builder up to the OCI layout: tree diffs, whiteouts, config semantics, caching keys."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from lightabaco.build.builder import build_layout, resolve_in_root
from lightabaco.build.containerfile import BuildError
from lightabaco.build.oci_write import diff, read_layout, snapshot


class NoStore:
    """Builds FROM scratch or a built-in base never ask the store for anything."""

    def get(self, ref):
        raise AssertionError(f"unexpected store lookup {ref}")

    ensure = get


def _context(tmp_path: Path, containerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(containerfile)
    for name, text in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    return ctx


def _members(layer_blob: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(layer_blob) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_scratch_build_config_and_files(tmp_path: Path):
    ctx = _context(tmp_path, """FROM scratch
ARG GREETING=hi
ENV GREETING=$GREETING PATH=/bin
WORKDIR /app
COPY --chmod=755 run.sh ./
COPY --chown=1000:1001 data/ /app/data/
LABEL purpose="a test" owner=me
USER 1000:1000
ENTRYPOINT ["/app/run.sh"]
CMD ["x"]
""", {"run.sh": "#!/bin/sh\necho $GREETING\n", "data/a.txt": "A", "data/sub/b.txt": "B"})
    out = tmp_path / "layout"
    digest, key, steps = build_layout(ctx, out, NoStore(), tmp_path / "cache", tag="t/scratch:1",
                                      build_args={"GREETING": "hello"}, network="none")
    doc, layers, config_digest = read_layout(out)
    assert config_digest == digest and len(layers) == 1
    cfg = doc["config"]
    assert cfg["Env"] == ["GREETING=hello", "PATH=/bin"]
    assert cfg["WorkingDir"] == "/app" and cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["/app/run.sh"] and cfg["Cmd"] == ["x"]
    assert cfg["Labels"] == {"purpose": "a test", "owner": "me"}
    members = _members(layers[0].blob)
    assert members["app/run.sh"].mode & 0o777 == 0o755
    assert {"app/data/a.txt", "app/data/sub/b.txt"} <= set(members)
    assert (members["app/data/a.txt"].uid, members["app/data/a.txt"].gid) == (1000, 1001)
    assert members["app/run.sh"].uid == 0  # COPY without --chown: root-owned, as Docker does
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "t/scratch:1"
    assert len(steps) == 9


def test_same_inputs_same_digest(tmp_path: Path):
    ctx = _context(tmp_path, "FROM scratch\nENV A=1\nCMD [\"/x\"]\n")
    d1, k1, _ = build_layout(ctx, tmp_path / "o1", NoStore(), tmp_path / "cache", network="none")
    d2, k2, _ = build_layout(ctx, tmp_path / "o2", NoStore(), tmp_path / "cache", network="none")
    assert (d1, k1) == (d2, k2)
    (ctx / "new-file").write_text("changes the context")
    assert build_layout(ctx, tmp_path / "o3", NoStore(), tmp_path / "cache", network="none")[1] != k1


def test_entrypoint_resets_inherited_cmd_and_ignore_file(tmp_path: Path):
    ctx = _context(tmp_path, "FROM lightabaco/busybox\nCOPY . /src/\nENTRYPOINT [\"/bin/echo\"]\n",
                   {"keep.txt": "k", "secret.key": "s", ".containerignore": "*.key\n"})
    build_layout(ctx, tmp_path / "o", NoStore(), tmp_path / "cache", network="none")
    doc, layers, _ = read_layout(tmp_path / "o")
    assert "Cmd" not in doc["config"]  # busybox's ["sh"] is dropped by the new ENTRYPOINT
    top = _members(layers[-1].blob)
    assert "src/keep.txt" in top and "src/secret.key" not in top


def test_copy_outside_context_is_refused(tmp_path: Path):
    (tmp_path / "outside.txt").write_text("x")
    ctx = _context(tmp_path, "FROM scratch\nCOPY ../outside.txt /x\n")
    with pytest.raises(BuildError, match="outside the build context|matches nothing"):
        build_layout(ctx, tmp_path / "o", NoStore(), tmp_path / "cache", network="none")


def test_run_in_busybox_records_changes_and_deletions(tmp_path: Path):
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    ctx = _context(tmp_path, """FROM lightabaco/busybox
RUN mkdir -p /opt/tool && echo built > /opt/tool/version && rm /bin/vi && ln -s /opt/tool/version /v
RUN id -u > /opt/tool/uid
""")
    build_layout(ctx, tmp_path / "o", NoStore(), tmp_path / "cache", network="none")
    doc, layers, _ = read_layout(tmp_path / "o")
    assert len(layers) == 2
    top = _members(layers[-1].blob)
    assert "bin/.wh.vi" in top
    assert top["v"].issym() and top["v"].linkname == "/opt/tool/version"
    assert {"opt/tool/version", "opt/tool/uid"} <= set(top)
    assert "proc" not in top and "dev" not in top  # bwrap's mount points are not part of the image


def test_failing_run_reports_output_and_line(tmp_path: Path):
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    ctx = _context(tmp_path, "FROM lightabaco/busybox\n\nRUN echo about to fail && exit 7\n")
    with pytest.raises(BuildError, match=r"Containerfile:3: RUN .* exit status 7:\nabout to fail"):
        build_layout(ctx, tmp_path / "o", NoStore(), tmp_path / "cache", network="none")


def test_resolve_in_root_follows_symlinks_without_escaping(tmp_path: Path):
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    os.symlink("/../../..", root / "evil")
    assert resolve_in_root(root, "/bin/tool") == root / "usr" / "bin" / "tool"
    assert resolve_in_root(root, "/evil/etc/passwd") == root / "etc" / "passwd"


def test_diff_reports_minimal_deletions(tmp_path: Path):
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("1")
    (root / "keep").write_text("k")
    before = snapshot(root)
    shutil.rmtree(root / "a")
    (root / "new").write_text("n")
    changed, deleted = diff(before, snapshot(root))
    assert changed == ["new"] and deleted == ["a"]


def test_add_extracts_local_archives_and_copies_other_files(tmp_path: Path):
    ctx = _context(tmp_path, "FROM scratch\nADD bundle.tar.gz /opt/\nADD plain.txt /opt/plain.txt\n",
                   {"plain.txt": "p"})
    payload = tmp_path / "payload"
    (payload / "pkg").mkdir(parents=True)
    (payload / "pkg" / "mod.py").write_text("x = 1\n")
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tar:
        tar.add(payload / "pkg", arcname="pkg")
    build_layout(ctx, tmp_path / "o", NoStore(), tmp_path / "cache", network="none")
    top = _members(read_layout(tmp_path / "o")[1][-1].blob)
    assert {"opt/pkg/mod.py", "opt/plain.txt"} <= set(top) and "opt/bundle.tar.gz" not in top


def test_run_as_the_image_user(tmp_path: Path):
    if not shutil.which("bwrap"):
        pytest.skip("bubblewrap is not installed")
    ctx = _context(tmp_path, "FROM lightabaco/busybox\nUSER app\nRUN id -u > /tmp/uid && echo $HOME > /tmp/home\n")
    build_layout(ctx, tmp_path / "o", NoStore(), tmp_path / "cache", network="none")
    with tarfile.open(read_layout(tmp_path / "o")[1][-1].blob) as tar:
        assert tar.extractfile("tmp/uid").read() == b"1000\n"
