"""`lightabaco doctor` checks, fed with the facts of other hosts (Ubuntu 24.04, RHEL 7, NFS homes)."""

from __future__ import annotations

from pathlib import Path

from lightabaco.cli import doctor


def _reader(values: dict[str, str]):
    return lambda path: values.get(path)


def test_ubuntu_apparmor_restriction_is_a_warning_with_the_fix():
    checks = doctor.check_userns(_reader({
        "/proc/sys/user/max_user_namespaces": "63000",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}))
    warn = [c for c in checks if c.status == "warn"]
    assert warn and "apparmor_restrict_unprivileged_userns=1" in warn[0].detail and "userns" in warn[0].fix


def test_disabled_user_namespaces_fail_with_sysctl_fix():
    checks = doctor.check_userns(_reader({"/proc/sys/user/max_user_namespaces": "0",
                                          "/proc/sys/kernel/unprivileged_userns_clone": "0"}))
    assert [c.status for c in checks] == ["fail", "fail"]
    assert "max_user_namespaces" in checks[0].fix and "unprivileged_userns_clone=1" in checks[1].fix


def test_plain_host_is_ok():
    checks = doctor.check_userns(_reader({"/proc/sys/user/max_user_namespaces": "96365"}))
    assert [c.status for c in checks] == ["ok"]


def test_nfs_home_warns_about_sqlite(tmp_path: Path):
    mounts = f"/dev/vda / ext4 rw 0 0\nfiler:/home {tmp_path} nfs4 rw 0 0\n"
    checks = doctor.check_home(tmp_path / "lightabaco", mounts_text=mounts)
    fs = checks[0]
    assert fs.status == "warn" and "nfs4" in fs.detail and "SQLite" in fs.detail and "--home" in fs.fix


def test_local_home_is_ok(tmp_path: Path):
    checks = doctor.check_home(tmp_path, mounts_text="/dev/vda / ext4 rw 0 0\n")
    assert checks[0].status == "ok" and "ext4" in checks[0].detail
    assert checks[1].name == "free disk"


def test_render_summarises_the_worst_status():
    text = doctor.render([doctor.Check("a", "ok", "fine"), doctor.Check("b", "warn", "meh", "do x")])
    assert "[WARN] b: meh" in text and "fix: do x" in text and text.endswith("the warnings above say what is degraded.")
    text = doctor.render([doctor.Check("c", "fail", "broken", "do y")])
    assert "cannot run executions" in text


def test_root_home_under_root_dir_is_unreachable(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(doctor.os, "getuid", lambda: 0)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    checks = doctor.check_root_home(private / "home")
    assert checks[0].status == "fail" and "--home /var/lib/lightabaco" in checks[0].fix


def test_missing_subordinate_ids_are_explained(tmp_path: Path):
    import pwd
    import os

    name = pwd.getpwuid(os.getuid()).pw_name
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text(f"{name}:100000:65536\n")
    subgid.write_text("someone-else:100000:65536\n")
    assert "subgid has no range for" in doctor.subid_problem(str(subuid), str(subgid))
    subgid.write_text(f"{os.getuid()}:100000:65536\n")
    assert doctor.subid_problem(str(subuid), str(subgid)) is None


def _which(*present: str):
    return lambda tool: f"/usr/bin/{tool}" if tool in present else None


def test_missing_newuidmap_fails_the_python_samples_for_a_user():
    problems = doctor.python_base_problems(uid=1000, which=_which("mmdebstrap"), subids=lambda: None,
                                           mirror=lambda: None)
    assert [p.name for p in problems] == ["newuidmap/newgidmap"]
    assert "sudo apt-get install -y uidmap" in problems[0].fix
    checks = doctor.check_tools(home=None, uid=1000, problems=problems)
    failed = [c for c in checks if c.status == "fail"]
    assert failed and "Python sample images" in failed[0].detail and "uidmap" in failed[0].fix
    assert "cannot run executions" in doctor.render(checks)


def test_newuidmap_without_setuid_is_not_enough():
    problems = doctor.python_base_problems(uid=1000, which=_which("mmdebstrap", "newuidmap", "newgidmap"),
                                           subids=lambda: None, mirror=lambda: None, capable=lambda p: False)
    assert [p.name for p in problems] == ["newuidmap/newgidmap"] and "setuid" in problems[0].detail


def test_root_needs_neither_newuidmap_nor_subordinate_ids():
    problems = doctor.python_base_problems(uid=0, which=_which("mmdebstrap"), subids=lambda: "no range",
                                           mirror=lambda: None)
    assert problems == []
    checks = doctor.check_tools(home=None, uid=0, which=_which("mmdebstrap"), problems=problems)
    assert any(c.status == "ok" and "--mode=root" in c.detail for c in checks)


def test_every_missing_piece_is_named_with_its_fix():
    def no_mirror():
        raise RuntimeError("cannot find a Debian/Ubuntu mirror in /etc/apt/sources.list*: details")

    problems = doctor.python_base_problems(uid=1000, which=_which(), subids=lambda: "/etc/subuid has no range",
                                           mirror=no_mirror)
    names = [p.name for p in problems]
    assert names == ["mmdebstrap", "newuidmap/newgidmap", "subordinate ids", "Debian mirror"]
    assert all(p.fix for p in problems)


def test_a_cached_debian_base_turns_failures_into_warnings(tmp_path: Path):
    (tmp_path / "build-cache" / "bases").mkdir(parents=True)
    (tmp_path / "build-cache" / "bases" / "debian-bookworm-abc.tar").write_bytes(b"")
    problems = [doctor.Check("mmdebstrap", "fail", "not installed", "sudo apt-get install -y mmdebstrap")]
    checks = doctor.check_tools(home=tmp_path, uid=1000, problems=problems)
    assert not [c for c in checks if c.status == "fail" and c.name != "busybox"]
    assert any(c.status == "warn" and c.name == "mmdebstrap" for c in checks)


def test_missing_busybox_fails_the_default_samples(monkeypatch):
    from lightabaco.build import bases
    from lightabaco.build.containerfile import BuildError

    def none():
        raise BuildError("no statically linked busybox on this host: install it")

    monkeypatch.setattr(bases, "find_busybox", none)
    checks = doctor.check_tools(home=None, uid=0, problems=[])
    busybox = next(c for c in checks if c.name == "busybox")
    assert busybox.status == "fail" and "busybox-static" in busybox.fix and "sample images" in busybox.detail
