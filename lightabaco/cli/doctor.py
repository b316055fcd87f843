"""`lightabaco doctor`: what this host supports, what is missing, and the command that fixes each thing.

Each check returns a Check(name, status, detail, fix) with status "ok", "warn" or "fail". A "fail" means
executions cannot run (or the home cannot hold a database); a "warn" means something degrades.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

NETWORK_FILESYSTEMS = {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph",
                       "fuse.sshfs", "9p", "panfs", "wekafs"}


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def check_userns(read: Callable[[str], str | None] = _read) -> list[Check]:
    checks = []
    max_ns = read("/proc/sys/user/max_user_namespaces")
    if max_ns is not None and max_ns.isdigit() and int(max_ns) == 0:
        checks.append(Check("user namespaces", "fail", "user.max_user_namespaces is 0: unprivileged "
                            "sandboxes are disabled", "sudo sysctl -w user.max_user_namespaces=15000 "
                            "(and persist it in /etc/sysctl.d/), or ask your admin"))
    clone = read("/proc/sys/kernel/unprivileged_userns_clone")
    if clone == "0":
        checks.append(Check("user namespaces", "fail", "kernel.unprivileged_userns_clone is 0 (Debian/Ubuntu "
                            "patch)", "sudo sysctl -w kernel.unprivileged_userns_clone=1"))
    apparmor = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if apparmor == "1":
        checks.append(Check("AppArmor userns restriction", "warn",
                            "kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10+): bwrap may fail with "
                            "'Permission denied' setting up uid maps unless an AppArmor profile allows it",
                            "install an AppArmor profile for /usr/bin/bwrap with `userns,` (Ubuntu ships "
                            "bwrap-userns-restrict in apparmor-profiles), or as a last resort "
                            "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"))
    elif apparmor is not None:
        checks.append(Check("AppArmor userns restriction", "ok", f"apparmor_restrict_unprivileged_userns={apparmor}"))
    if not checks:
        checks.append(Check("user namespaces", "ok", f"user.max_user_namespaces={max_ns or 'unknown'}"))
    return checks


def check_backends() -> list[Check]:
    from lightabaco.sandbox.backend import probe_all

    checks = []
    reports = probe_all()
    for report in reports:
        name = f"backend {report.backend}"
        version = f" {report.version}" if report.version else ""
        if report.usable:
            notes = ("; " + "; ".join(report.notes)) if report.notes else ""
            checks.append(Check(name, "ok", f"usable{version}{notes}"))
        else:
            status = "warn" if report.backend != "bwrap" else "fail"
            reasons = "; ".join(report.reasons) or "not usable"
            fix = "sudo apt-get install -y bubblewrap" if report.backend == "bwrap" and "not installed" in reasons \
                else "see the reason; podman is optional" if report.backend == "podman" else "see the reason"
            checks.append(Check(name, status, f"not usable{version}: {reasons}", fix))
    if not any(r.usable for r in reports):
        checks.append(Check("sandbox", "fail", "no backend can run executions on this host",
                            "fix the bwrap check above (`sudo apt-get install -y bubblewrap`, user namespaces)"))
    return checks


def _cgroup_mode() -> tuple[str, str]:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "v2", (_read("/sys/fs/cgroup/cgroup.controllers") or "")
    if Path("/sys/fs/cgroup/unified").is_dir():
        return "hybrid", (_read("/sys/fs/cgroup/unified/cgroup.controllers") or "")
    return "v1", ""


def check_cgroups() -> list[Check]:
    mode, controllers = _cgroup_mode()
    if mode != "v2":
        return [Check("cgroups", "warn", f"cgroup {mode}: per-execution memory/cpu/pids limits use rlimits and "
                      "wall-clock timeouts only; cpu and io come from wait4",
                      "nothing to do for correctness; a cgroup v2 host with systemd --user delegation adds "
                      "hard memory/pids limits")]
    own = _read("/proc/self/cgroup") or ""
    path = own.split("::", 1)[1].strip() if "::" in own else "/"
    directory = Path("/sys/fs/cgroup") / path.lstrip("/")
    delegated = os.access(directory, os.W_OK) and os.access(directory / "cgroup.subtree_control", os.W_OK)
    if delegated:
        return [Check("cgroups", "ok", f"cgroup v2, {directory} is writable (delegated); controllers: {controllers}")]
    return [Check("cgroups", "warn", f"cgroup v2 but {directory} is not delegated to this user: limits fall back "
                  "to rlimits and timeouts", "run lightabaco in a delegated scope: "
                  "systemd-run --user --scope -p Delegate=yes lightabaco serve")]


def _mount_of(path: Path, mounts_text: str | None = None) -> tuple[str, str]:
    """(mount point, filesystem type) holding path, from /proc/mounts (longest matching mount point)."""
    text = mounts_text if mounts_text is not None else (_read("/proc/mounts") or "")
    target = str(path.resolve())
    best = ("/", "unknown")
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, parts[2])
    return best


def check_home(home: Path, mounts_text: str | None = None) -> list[Check]:
    probe = home
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    point, fstype = _mount_of(probe, mounts_text)
    checks = []
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse"):
        checks.append(Check("home filesystem", "warn", f"{home} is on {fstype} ({point}): SQLite locking is "
                            "unreliable on network filesystems and the image store is slow there",
                            "use a local disk: --home /tmp/$USER/lightabaco or /local/scratch/$USER/lightabaco "
                            "(on HPC: node-local scratch), or LIGHTABACO_DATABASE_URL=postgresql://..."))
    else:
        checks.append(Check("home filesystem", "ok", f"{home} is on {fstype} ({point})"))
    usage = shutil.disk_usage(probe)
    free_gb = usage.free / 1e9
    if free_gb < 0.5:
        checks.append(Check("free disk", "fail", f"{free_gb:.2f} GB free at {probe}",
                            "free space or choose another --home (images need ~0.3 GB each for Python ones)"))
    elif free_gb < 2:
        checks.append(Check("free disk", "warn", f"{free_gb:.1f} GB free at {probe}",
                            "the samples need about 1.5 GB; `lightabaco images rm` unused images"))
    else:
        checks.append(Check("free disk", "ok", f"{free_gb:.1f} GB free at {probe}"))
    return checks


SAMPLES_BUSYBOX = "the busybox sample images (abacosamples/test, jstubbs/abaco_test) and FROM lightabaco/busybox"
SAMPLES_PYTHON = ("the Python sample images (abacosamples/wc, py3_func, sleep_loop, lightabaco/classify) and "
                  "FROM lightabaco/python")


def _debian_base_cached(home: Path | None) -> Path | None:
    """The Debian tree mmdebstrap made for this home before (then mmdebstrap is not needed again)."""
    if home is None:
        return None
    return next(iter(sorted((Path(home) / "build-cache" / "bases").glob("debian-*.tar"))), None)


def _setuid_or_capable(path: str) -> bool:
    """newuidmap/newgidmap only work installed setuid root (Debian) or with file capabilities (Fedora)."""
    try:
        st = os.stat(path)
        if st.st_uid == 0 and st.st_mode & 0o4000:
            return True
        return "security.capability" in os.listxattr(path)
    except OSError:
        return False


def python_base_problems(uid: int | None = None, which: Callable[[str], str | None] = shutil.which,
                         subids: Callable[[], str | None] | None = None,
                         mirror: Callable[[], object] | None = None,
                         capable: Callable[[str], bool] = _setuid_or_capable) -> list[Check]:
    """What stops `mmdebstrap` from making the Debian base of lightabaco/python here, one Check each
    (status "fail"; empty when nothing does). As root mmdebstrap runs in --mode=root; as an ordinary user
    in --mode=unshare, which maps the tree's ids with newuidmap/newgidmap through /etc/subuid ranges."""
    uid = os.getuid() if uid is None else uid
    problems = []
    if not which("mmdebstrap"):
        problems.append(Check("mmdebstrap", "fail", "not installed", "sudo apt-get install -y mmdebstrap"))
    if uid != 0:
        missing = [t for t in ("newuidmap", "newgidmap") if not which(t)]
        if missing:
            problems.append(Check("newuidmap/newgidmap", "fail", f"{' and '.join(missing)} not installed: "
                                  "mmdebstrap --mode=unshare cannot map the ids of a Debian tree",
                                  "sudo apt-get install -y uidmap"))
        else:
            weak = [t for t in ("newuidmap", "newgidmap") if not capable(which(t) or t)]
            if weak:
                problems.append(Check("newuidmap/newgidmap", "fail", f"{' and '.join(weak)} is neither setuid "
                                      "root nor given file capabilities, so it cannot map ids",
                                      "sudo apt-get install --reinstall -y uidmap"))
        problem = (subids or subid_problem)()
        if problem:
            problems.append(Check("subordinate ids", "fail", problem,
                                  "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER"))
    try:
        (mirror or _host_archive)()
    except Exception as exc:  # BuildError from bases.host_archive: no usable apt source
        problems.append(Check("Debian mirror", "fail", str(exc).split(":")[0],
                              "add the Debian/Ubuntu archive to /etc/apt/sources.list"))
    return problems


def _host_archive() -> object:
    from lightabaco.build.bases import host_archive

    return host_archive()


def check_tools(home: Path | None = None, uid: int | None = None,
                which: Callable[[str], str | None] = shutil.which,
                problems: list[Check] | None = None) -> list[Check]:
    """The tools each default feature needs, named with the feature that fails without them. The sample
    images are a default feature (`lightabaco serve` builds them), so a missing tool is a "fail"."""
    checks = []
    from lightabaco.build.bases import find_busybox
    from lightabaco.build.containerfile import BuildError

    try:
        checks.append(Check("busybox", "ok", f"{find_busybox()}: {SAMPLES_BUSYBOX}"))
    except BuildError as exc:
        checks.append(Check("busybox", "fail", f"{str(exc).split(':')[0]}: {SAMPLES_BUSYBOX} cannot be built",
                            "sudo apt-get install -y busybox-static"))
    uid = os.getuid() if uid is None else uid
    problems = python_base_problems(uid, which) if problems is None else problems
    cached = _debian_base_cached(home)
    mode = "root" if uid == 0 else "unshare"
    if cached is not None:
        checks.append(Check("Debian base (Python images)", "ok", f"already made ({cached}): {SAMPLES_PYTHON} "
                            "build without mmdebstrap"))
        for problem in problems:  # only matters for a new home or a new mirror
            checks.append(Check(problem.name, "warn", f"{problem.detail} (a new home would need it for "
                                f"{SAMPLES_PYTHON})", problem.fix))
    elif problems:
        for problem in problems:
            checks.append(Check(problem.name, "fail", f"{problem.detail}: {SAMPLES_PYTHON} cannot be built "
                                "(`lightabaco serve` falls back to the busybox samples)",
                                f"{problem.fix} (or build FROM a pulled python image)"))
    else:
        checks.append(Check("mmdebstrap (Python images)", "ok", f"{which('mmdebstrap')} --mode={mode}"
                            + (" with newuidmap/newgidmap and subordinate ids" if mode == "unshare" else "")
                            + f": {SAMPLES_PYTHON}"))
    version = sys.version_info
    status = "ok" if version >= (3, 11) else "fail"
    checks.append(Check("python", status, f"{platform.python_implementation()} {platform.python_version()}",
                        "" if status == "ok" else "install Python 3.11 or newer"))
    return checks


def subid_problem(subuid: str = "/etc/subuid", subgid: str = "/etc/subgid") -> str | None:
    """Why `mmdebstrap --mode=unshare` cannot map the ids a Debian tree needs, or None if it can."""
    import pwd

    name = pwd.getpwuid(os.getuid()).pw_name
    for path in (subuid, subgid):
        rows = (_read(path) or "").splitlines()
        if not any(r.split(":")[0] in (name, str(os.getuid())) for r in rows if r.count(":") == 2):
            return (f"{path} has no range for {name}: building the offline Python base as a normal user "
                    "(mmdebstrap --mode=unshare) needs one")
    return None


def check_root_home(home: Path) -> list[Check]:
    """As root, sandboxes drop to an unprivileged user that must traverse every directory above the
    home's image trees; /root (0700) is the usual trap."""
    if os.getuid() != 0:
        return []
    blocked = [p for p in [*reversed(home.parents), home] if p.exists() and not (p.stat().st_mode & 0o001)]
    if blocked:
        return [Check("home reachable by sandboxes", "fail", f"running as root, sandboxes run as an unprivileged "
                      f"user that cannot traverse {blocked[0]} (mode {blocked[0].stat().st_mode & 0o777:o})",
                      "use a home outside /root, e.g. --home /var/lib/lightabaco "
                      f"(or chmod o+x {blocked[0]})")]
    return [Check("running as root", "warn", "sandboxes run as an unprivileged system user (lightabaco-sbx)",
                  "run lightabaco as a normal user where you can")]


def check_network_modes(tun: str = "/dev/net/tun") -> list[Check]:
    """Which per-actor network modes this host can run (issue 11), and what to install for the rest."""
    from lightabaco.sandbox import network

    checks = [Check("network none / api", "ok", "own network namespace; `api` relays 127.0.0.1 inside to "
                    "this API (needs nothing more)")]
    if network.pasta_path() is None:
        checks.append(Check("network outbound", "warn", "pasta is not installed: actors with network "
                            "'outbound' cannot start", "sudo apt-get install -y passt"))
    elif not os.path.exists(tun):
        checks.append(Check("network outbound", "warn", f"{tun} is missing: pasta needs the tun device",
                            "sudo modprobe tun"))
    elif not (os.stat(tun).st_mode & 0o006) == 0o006:
        checks.append(Check("network outbound", "warn", f"{tun} is not readable and writable by all: pasta "
                            "runs as the sandbox user and cannot open it (no udev here?)",
                            f"sudo chmod 0666 {tun} (Debian's default)"))
    else:
        checks.append(Check("network outbound", "ok", f"pasta ({network.pasta_path()}), no host loopback, "
                            "no link-local"))
    checks.append(Check("network host", "ok", "admins' actors only, when LIGHTABACO_NETWORK_ALLOW_HOST=true"))
    return checks


def run_checks(home: Path) -> list[Check]:
    checks = (check_userns() + check_backends() + check_cgroups() + check_home(home) + check_root_home(home)
              + check_tools(home))
    checks += check_network_modes()
    return checks


def render(checks: list[Check]) -> str:
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for check in checks:
        lines.append(f"[{marks[check.status]}] {check.name}: {check.detail}")
        if check.fix and check.status != "ok":
            lines.append(f"       fix: {check.fix}")
    worst = "fail" if any(c.status == "fail" for c in checks) else "warn" if any(
        c.status == "warn" for c in checks) else "ok"
    summary = {"ok": "everything lightabaco needs is here.",
               "warn": "lightabaco will run; the warnings above say what is degraded.",
               "fail": "lightabaco cannot run executions (or build the sample images) here until the failures "
                       "above are fixed; each says which feature fails."}[worst]
    lines.append(summary)
    return "\n".join(lines)


def as_dicts(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(c) for c in checks]
