"""Base images that can be made without a registry: busybox from the host, Debian+Python via mmdebstrap.

`FROM lightabaco/busybox` and `FROM lightabaco/python` in a Containerfile resolve here when the image
store does not already hold them. Each base is written once as an OCI layout under
`<cache>/bases/<name>-<key>/`, keyed by what goes into it (the busybox binary; the suite, mirror and
package list), so a second build reuses it instantly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from .containerfile import BuildError
from .oci_write import EPOCH, LayoutWriter, read_layout

Progress = Callable[[str, int, "int | None", str], None]

BUSYBOX = "lightabaco/busybox:latest"
PYTHON = "lightabaco/python:3"
BASES_VERSION = "1"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PYTHON_PACKAGES = ["python3", "python3-cloudpickle", "python3-pip"]
# The python base's environment. PIP_BREAK_SYSTEM_PACKAGES: Debian 12 marks its Python "externally
# managed" (PEP 668), so a plain `RUN pip install six` would refuse; in an image built for one actor that
# guard protects nothing, and Debian's pip installs into /usr/local, leaving dpkg's files alone. This is
# what the official python images give too (their Python lives in /usr/local, without the marker).
PYTHON_ENV = [DEFAULT_PATH, "LANG=C.UTF-8", "PYTHONUNBUFFERED=1", "PIP_BREAK_SYSTEM_PACKAGES=1"]
# Bumped when the python layout changes without the Debian tree changing (no new mmdebstrap run).
PYTHON_LAYOUT_VERSION = "2"
PASSWD = ("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"
_SIDE_SUITE = re.compile(r"-(security|updates|backports)$")  # not the main archive
_ALIASES = {"lightabaco/busybox": BUSYBOX, "lightabaco/python": PYTHON, "lightabaco/python:3.11": PYTHON}


def builtin_name(ref: str) -> str | None:
    """The canonical built-in base a FROM reference names, or None when it is not a built-in one."""
    ref = ref.strip()
    for prefix in ("docker.io/", "localhost/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    if ref in (BUSYBOX, PYTHON):
        return ref
    return _ALIASES.get(ref)


def ensure_base(name: str, cache_dir: Path, progress: Progress | None = None) -> Path:
    """The OCI layout of a built-in base, building it on first use."""
    canonical = builtin_name(name)
    if canonical == BUSYBOX:
        return busybox_layout(cache_dir)
    if canonical == PYTHON:
        return python_layout(cache_dir, progress)
    raise BuildError(f"{name} is not a built-in base; built-in bases are {BUSYBOX} and {PYTHON}")


def _is_static_elf(path: Path) -> bool:
    # A dynamically linked busybox would need the host's libc inside the image: look for PT_INTERP.
    data = path.read_bytes()[:4096]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        start = phoff + i * phentsize
        if start + 4 <= len(data) and int.from_bytes(data[start:start + 4], "little") == 3:
            return False
    return True


def find_busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox") or ""):
        if candidate and Path(candidate).is_file() and _is_static_elf(Path(candidate)):
            return Path(candidate)
    raise BuildError("no statically linked busybox on this host: install it with "
                     "`sudo apt-get install -y busybox-static`")


def _add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644,
         data: bytes = b"", link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, EPOCH, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def busybox_layout(cache_dir: Path) -> Path:
    binary = find_busybox()
    blob = binary.read_bytes()
    key = hashlib.sha256(blob + BASES_VERSION.encode()).hexdigest()[:16]
    dest = cache_dir / "bases" / f"busybox-{key}"
    if (dest / "index.json").exists():
        return dest
    applets = subprocess.run([str(binary), "--list"], capture_output=True, text=True, check=True).stdout.split()
    tmp = Path(tempfile.mkdtemp(prefix="busybox-", dir=_mkdir(cache_dir / "bases")))
    layer = tmp / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("home", 0o755), ("root", 0o700), ("tmp", 0o1777),
                        ("usr", 0o755), ("usr/bin", 0o755), ("var", 0o755)):
            _add(tar, d, tarfile.DIRTYPE, mode)
        _add(tar, "home/app", tarfile.DIRTYPE, 0o755)
        _add(tar, "bin/busybox", mode=0o755, data=blob)
        for applet in sorted(set(applets) - {"busybox"}):
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox")
        _add(tar, "usr/bin/env", tarfile.SYMTYPE, 0o777, link="/bin/busybox")  # for #!/usr/bin/env
        _add(tar, "etc/passwd", data=PASSWD.encode())
        _add(tar, "etc/group", data=GROUP.encode())
    writer = LayoutWriter(tmp)
    writer.add_layer_tar(layer)
    writer.finish({"Env": [DEFAULT_PATH], "Cmd": ["sh"],
                   "Labels": {"org.lightabaco.base": "busybox"}}, ref=BUSYBOX)
    return _publish(tmp, dest)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _publish(tmp: Path, dest: Path) -> Path:
    # Rename into place so a crash never leaves a half-written base that looks complete.
    try:
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process published it first
    return dest


def host_mirror(sources: list[Path] | None = None) -> tuple[str, str]:
    """(mirror URL, suite) of the host's main Debian/Ubuntu archive, read from its apt sources."""
    uri, suite, _ = host_archive(sources)
    return uri, suite


def host_archive(sources: list[Path] | None = None) -> tuple[str, str, list[str]]:
    """(mirror URL, suite, components) of the host's main Debian/Ubuntu archive, from its apt sources.

    Read at run time rather than written anywhere: the mirror is whatever this host already uses.
    """
    paths = sources or [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources" or re.search(r"^URIs:", text, re.M):
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
                if "deb" not in fields.get("Types", "").split() or "Enabled: no" in stanza:
                    continue
                for uri in fields.get("URIs", "").split():
                    suites = [s for s in fields.get("Suites", "").split() if not _SIDE_SUITE.search(s)]
                    if suites and "security" not in uri:
                        return uri, suites[0], fields.get("Components", "main").split()
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and "security" not in words[1] \
                    and not _SIDE_SUITE.search(words[2]):
                return words[1], words[2], words[3:] or ["main"]
    raise BuildError("cannot find a Debian/Ubuntu mirror in /etc/apt/sources.list*: the offline Python base "
                     "needs one (or build FROM an image you pulled, e.g. python:3.12-slim)")


def _mmdebstrap_tar(cache_dir: Path, progress: Progress | None) -> Path:
    mirror, suite, components = host_archive()
    # Ubuntu keeps python3-cloudpickle in universe: use the components the host itself enables.
    components = [c for c in components if c in ("main", "universe", "contrib", "non-free")] or ["main"]
    key = hashlib.sha256(json.dumps([BASES_VERSION, mirror, suite, PYTHON_PACKAGES]).encode()).hexdigest()[:16]
    out = _mkdir(cache_dir / "bases") / f"debian-{suite}-{key}.tar"
    if out.exists():
        return out
    tool = shutil.which("mmdebstrap")
    if not tool:
        raise BuildError("building the offline Python base needs mmdebstrap: "
                         "`sudo apt-get install -y mmdebstrap` (or build FROM a pulled python image)")
    mode = "root" if os.getuid() == 0 else "unshare"
    tmp = out.with_name(f"{out.name}.{os.getpid()}.partial")  # concurrent first builds do not collide
    argv = [tool, f"--mode={mode}", "--variant=minbase", "--include=" + ",".join(PYTHON_PACKAGES),
            "--aptopt=APT::Install-Recommends \"false\"",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
            "--skip=output/dev", "--format=tar", "--components=" + ",".join(components), suite, str(tmp), mirror]
    if progress:
        progress("base", 0, None, f"mmdebstrap {suite} + {' '.join(PYTHON_PACKAGES)} (about half a minute)")
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise BuildError(f"mmdebstrap failed (exit {proc.returncode}) building the Python base from {mirror}:\n"
                         f"{tail}\nCheck that the mirror is reachable; as non-root, user namespaces and "
                         "/etc/subuid ranges must be available (`lightabaco doctor`).")
    os.replace(tmp, out)
    if progress:
        progress("base", 1, 1, f"Debian base ready in {time.monotonic() - started:.1f} s")
    return out


def _helper_layer(dest: Path) -> None:
    # The in-sandbox helper goes where Debian's python3 looks for packages in every version.
    helper = (Path(__file__).resolve().parent.parent / "actor.py").read_bytes()
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("usr", "usr/lib", "usr/lib/python3", "usr/lib/python3/dist-packages",
                  "usr/lib/python3/dist-packages/lightabaco"):
            _add(tar, d, tarfile.DIRTYPE, 0o755)
        _add(tar, "usr/lib/python3/dist-packages/lightabaco/__init__.py",
             data=b'"""lightabaco helpers for code running inside an actor (see lightabaco.actor)."""\n')
        _add(tar, "usr/lib/python3/dist-packages/lightabaco/actor.py", data=helper)


def python_layout(cache_dir: Path, progress: Progress | None = None) -> Path:
    debian = _mmdebstrap_tar(cache_dir, progress)
    helper_hash = hashlib.sha256((Path(__file__).resolve().parent.parent / "actor.py").read_bytes()).hexdigest()
    key = hashlib.sha256(f"{debian.name}:{helper_hash}:{BASES_VERSION}:{PYTHON_LAYOUT_VERSION}".encode()
                         ).hexdigest()[:16]
    dest = cache_dir / "bases" / f"python-{key}"
    if (dest / "index.json").exists():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix="python-", dir=cache_dir / "bases"))
    writer = LayoutWriter(tmp)
    writer.add_layer_tar(debian, move=False)
    _helper_layer(tmp / "helper.tar")
    writer.add_layer_tar(tmp / "helper.tar")
    writer.finish({"Env": list(PYTHON_ENV), "Cmd": ["python3"],
                   "Labels": {"org.lightabaco.base": "debian-python3"}}, ref=PYTHON)
    return _publish(tmp, dest)


def base_config_digest(layout: Path) -> str:
    return read_layout(layout)[2]
