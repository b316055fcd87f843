"""Images built and saved by podman import to podman's own image ID (skipped when podman is absent)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from lightabaco.images import ImageStore

pytestmark = pytest.mark.e2e
PODMAN = shutil.which("podman")
CONTAINERFILE = """\
FROM scratch
ADD busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV GREETING=hello
WORKDIR /work
USER 1000:1000
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $GREETING from $(pwd) as $(id -u)"]
"""


class Podman:
    """podman with private storage, config and runtime dirs (sandbox-notes §2, §10.6)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for var, sub in (("HOME", "home"), ("XDG_RUNTIME_DIR", "xdg"), ("XDG_CONFIG_HOME", "config"),
                         ("XDG_DATA_HOME", "data"), ("TMPDIR", "tmp")):
            (base / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            self.env[var] = str(base / sub)
        runtime = ["--runtime", "runc"] if shutil.which("runc") else []
        self.argv = [PODMAN or "podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
                     "--storage-driver", "vfs", *runtime]

    def __call__(self, *args: str) -> str:
        p = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
        return p.stdout.strip()


@pytest.fixture(scope="module")
def podman_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Podman, str, Path]]:
    """(podman, image ID, dir with bb-oci.tar, bb-docker.tar, zstd-oci/) for a podman-built busybox."""
    if PODMAN is None:
        pytest.skip("podman is not installed (apt-get install -y podman runc)")
    if not Path("/bin/busybox").is_file():
        pytest.skip("/bin/busybox is missing: apt-get install -y busybox-static")
    base = tmp_path_factory.mktemp("podman")
    podman = Podman(base / "state")
    ctx = base / "ctx"
    ctx.mkdir()
    shutil.copy("/bin/busybox", ctx / "busybox")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    out = base / "out"
    out.mkdir()
    try:
        podman("build", "--isolation=chroot", "-q", "-t", "localhost/bb:1", str(ctx))
        image_id = podman("inspect", "--format", "{{.Id}}", "localhost/bb:1")
        podman("save", "--format", "oci-archive", "-o", str(out / "bb-oci.tar"), "localhost/bb:1")
        podman("save", "--format", "docker-archive", "-o", str(out / "bb-docker.tar"), "localhost/bb:1")
        podman("push", "-q", "--compression-format", "zstd", "localhost/bb:1", f"oci:{out / 'zstd-oci'}:latest")
    except RuntimeError as e:
        pytest.skip(f"podman cannot build here: {e}")
    yield podman, "sha256:" + image_id, out
    subprocess.run([*podman.argv, "rmi", "-af"], env=podman.env, capture_output=True, timeout=60)
    subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)


@pytest.mark.parametrize("source", ["bb-oci.tar", "bb-docker.tar", "zstd-oci"])
def test_podman_saved_image_imports_to_podman_image_id(podman_image, source: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _podman, image_id, out = podman_image
    store = ImageStore(tmp_path / "s")
    (img,) = store.import_path(out / source, tag=None if source != "zstd-oci" else "localhost/bb:1")
    assert img.config_digest == image_id
    assert img.reference == "localhost/bb:1"
    c = img.config
    assert (c.entrypoint, c.working_dir, c.user) == (["/bin/sh", "-c"], "/work", "1000:1000")
    assert "GREETING=hello" in c.env
    assert (img.rootfs / "work").is_dir()  # WorkingDir is in no layer: the prepare step made it
    assert os.readlink(img.rootfs / "bin/sh") == "/bin/busybox"  # absolute applet links, kept verbatim
    if shutil.which("bwrap"):
        p = subprocess.run(["bwrap", "--unshare-all", "--ro-bind", str(img.rootfs), "/", "--proc", "/proc",
                            "--dev", "/dev", "--uid", "1000", "--gid", "1000", "--chdir", c.working_dir,
                            "--setenv", "GREETING", "hello", *c.entrypoint, *c.cmd],
                           capture_output=True, text=True, timeout=30)
        assert p.stdout == "hello from /work as 1000\n", p.stderr
