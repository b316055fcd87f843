"""What this host supports, and why not, in words a user can act on (`lightabaco doctor`).

Each probe runs the real tool once (a few ms) and reads the kernel knobs that explain a failure:
user namespaces disabled or capped, Ubuntu's AppArmor restriction, a setuid bwrap, missing subuid
ranges for podman, crun's hybrid-cgroup failure, and which cgroup controllers we could delegate.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .types import ProbeReport
from .users import sandbox_host_user


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def userns_problems() -> list[str]:
    """Kernel settings that stop unprivileged user namespaces, each with its fix."""
    out: list[str] = []
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        out.append("user namespaces are disabled (user.max_user_namespaces=0): ask the admin to run "
                   "`sysctl -w user.max_user_namespaces=15000`")
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        out.append("unprivileged user namespaces are off (kernel.unprivileged_userns_clone=0): ask the "
                   "admin to run `sysctl -w kernel.unprivileged_userns_clone=1`")
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        out.append("AppArmor restricts unprivileged user namespaces "
                   "(kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10+): install an "
                   "AppArmor profile that allows `userns` for /usr/bin/bwrap, or ask the admin to set "
                   "the sysctl to 0")
    return out


def cgroup_notes() -> tuple[list[str], dict[str, bool]]:
    """Whether per-execution cgroups (pids, memory, cpu) could be used; this code does not use them
    unless delegated, so say what is enforced instead."""
    controllers = (_read("/sys/fs/cgroup/cgroup.controllers")
                   or _read("/sys/fs/cgroup/unified/cgroup.controllers") or "")
    v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")
    has_pids = "pids" in controllers.split()
    features = {"cgroup_v2": v2, "cgroup_pids_delegated": False}
    notes = []
    mode = "cgroup v2" if v2 else ("cgroup v1 (hybrid)" if os.path.isdir("/sys/fs/cgroup/unified")
                                  else "cgroup v1")
    notes.append(
        f"{mode}{' with pids' if has_pids else ' without a pids controller on v2'}: no delegated cgroup "
        "for per-execution limits, so processes are limited by RLIMIT_NPROC inside each sandbox's "
        "user namespace (per sandbox) plus a watchdog that ends a sandbox at its limit, memory by "
        "RLIMIT_DATA per process plus the watchdog, cpu by RLIMIT_CPU per process and the "
        "wall-clock timeout"
    )
    return notes, features


def _run(argv: list[str], timeout: float = 10.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, **kwargs)


def _explain_bwrap_error(stderr: str) -> str:
    if "No space left on device" in stderr or "ENOSPC" in stderr or "nesting depth" in stderr:
        return ("bwrap cannot create a user namespace (limit reached or nested sandbox: "
                f"{stderr.strip()}); raise user.max_user_namespaces or run lightabaco outside other "
                "sandboxes")
    if "Permission denied" in stderr or "Operation not permitted" in stderr:
        return (f"bwrap was refused a namespace or mount ({stderr.strip()}); on Ubuntu 23.10+ this is "
                "the AppArmor userns restriction (add a profile for bwrap), in containers it is the "
                "seccomp/AppArmor policy of the outer container (run with --privileged or on the host)")
    if "setuid" in stderr or "kernel does not support" in stderr:
        return (f"{stderr.strip()}: this kernel lacks unprivileged user namespaces; install bwrap "
                "setuid (chmod u+s) or use a newer kernel")
    return f"bwrap failed: {stderr.strip() or 'no message'}"


def probe_bwrap(bwrap: str = "bwrap") -> ProbeReport:
    """Run a trivial sandbox with the flags lightabaco uses, as the user that will run sandboxes."""
    report = ProbeReport(backend="bwrap", usable=False)
    path = shutil.which(bwrap)
    if path is None:
        report.reasons.append("bubblewrap is not installed: `apt-get install bubblewrap` "
                              "(or `dnf install bubblewrap`)")
        return report
    version = _run([path, "--version"])
    report.version = version.stdout.strip().replace("bubblewrap ", "")
    st = os.stat(path)
    report.features["setuid"] = bool(st.st_mode & 0o4000)
    if report.features["setuid"]:
        report.notes.append("bwrap is installed setuid: --disable-userns and some flags behave "
                            "differently; prefer a non-setuid bwrap with user namespaces")
    host_user = None
    try:
        host_user = sandbox_host_user()
    except Exception as exc:  # noqa: BLE001 - reported to the user as the reason
        report.reasons.append(str(exc))
        return report
    kwargs: dict[str, Any] = {}
    if host_user is not None:
        kwargs = {"user": host_user.uid, "group": host_user.gid, "extra_groups": []}
        report.notes.append(f"running as root: sandboxes run as the unprivileged host user "
                            f"{host_user.name} (uid {host_user.uid})")
    base = [path, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--as-pid-1", "--cap-drop", "ALL", "--ro-bind", "/", "/", "--proc", "/proc",
            "--dev", "/dev", "--tmpfs", "/tmp"]
    cmd = ["/bin/sh", "-c", "exit 0"] if os.path.exists("/bin/sh") else ["/bin/true"]
    try:
        plain = _run(base + ["--", *cmd], **kwargs)
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.reasons.append(f"cannot run bwrap: {exc}")
        return report
    if plain.returncode != 0:
        report.reasons.extend(userns_problems())
        report.reasons.append(_explain_bwrap_error(plain.stderr))
        return report
    report.usable = True
    report.features["disable_userns"] = False
    help_text = _run([path, "--help"]).stdout
    required = {"json_status": "--json-status-fd", "block_fd": "--block-fd",
                "bind_data": "--ro-bind-data", "args_fd": "--args", "clearenv": "--clearenv",
                "perms": "--perms", "size": "--size"}
    for feature, flag in required.items():
        report.features[feature] = flag in help_text
    report.features["overlay"] = "--overlay-src" in help_text
    missing = [flag for feature, flag in required.items() if not report.features[feature]]
    if missing:
        report.usable = False
        report.reasons.append(f"bwrap {report.version} lacks {', '.join(missing)}: install "
                              "bubblewrap 0.8 or newer (Debian 12, Ubuntu 24.04 and EL9 have it)")
    if "--disable-userns" in help_text:
        disabled = _run(base[:3] + ["--disable-userns"] + base[3:] + ["--", *cmd], **kwargs)
        report.features["disable_userns"] = disabled.returncode == 0
        if disabled.returncode != 0:
            report.notes.append("bwrap --disable-userns fails here "
                                f"({disabled.stderr.strip()}); sandboxes may create nested user "
                                "namespaces")
    else:
        report.notes.append("this bwrap has no --disable-userns (needs 0.8): sandboxes may create "
                            "nested user namespaces")
    notes, features = cgroup_notes()
    report.notes.extend(notes)
    report.features.update(features)
    from . import seccomp

    report.features["seccomp"] = seccomp.supported()
    if not seccomp.supported():
        report.notes.append("no seccomp deny-list on this architecture (x86-64 only): namespaces, "
                            "no capabilities and no_new_privs are the isolation")
    return report


def _podman_env(base: Path) -> dict[str, str]:
    """A private HOME/XDG/config for podman so it never writes to the user's or system's state."""
    env = {
        "HOME": str(base / "home"), "XDG_RUNTIME_DIR": str(base / "xdg"),
        "XDG_CONFIG_HOME": str(base / "config"), "XDG_DATA_HOME": str(base / "data"),
        "TMPDIR": str(base / "tmp"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CONTAINERS_CONF": str(base / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
    }
    return env


def subuid_problem(user: str) -> str | None:
    for name in ("/etc/subuid", "/etc/subgid"):
        text = _read(name) or ""
        if not re.search(rf"^(?:{re.escape(user)}|{os.getuid()}):", text, re.M):
            return (f"{name} has no range for {user}: rootless podman needs one "
                    f"(`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`)")
    return None
