"""Backend selection and the host probe's explanations (no sandbox started)."""

from __future__ import annotations

import pytest

from lightabaco.sandbox import backend as backend_mod
from lightabaco.sandbox import probe as probe_mod
from lightabaco.sandbox.errors import BackendUnavailable
from lightabaco.sandbox.types import ProbeReport


class FakeBackend:
    def __init__(self, name: str, usable: bool, reasons: list[str]) -> None:
        self.name = name
        self.report = ProbeReport(backend=name, usable=usable, reasons=reasons)

    def probe(self) -> ProbeReport:
        return self.report


def test_unknown_backend_name(tmp_path):
    with pytest.raises(BackendUnavailable, match="unknown backend 'docker'"):
        backend_mod.get_backend("docker", scratch=tmp_path)


def test_scratch_is_required():
    with pytest.raises(TypeError, match="scratch"):
        backend_mod.get_backend("auto")


def test_auto_prefers_bwrap_then_podman(monkeypatch, tmp_path):
    made = {"bwrap": FakeBackend("bwrap", False, ["user namespaces are disabled"]),
            "podman": FakeBackend("podman", True, [])}
    monkeypatch.setattr(backend_mod, "_make", lambda name, scratch: made[name])
    assert backend_mod.get_backend("auto", scratch=tmp_path) is made["podman"]
    made["bwrap"].report.usable = True
    assert backend_mod.get_backend("auto", scratch=tmp_path) is made["bwrap"]


def test_nothing_usable_lists_every_reason(monkeypatch, tmp_path):
    made = {"bwrap": FakeBackend("bwrap", False, ["user namespaces are disabled: ask the admin"]),
            "podman": FakeBackend("podman", False, ["podman is not installed"])}
    monkeypatch.setattr(backend_mod, "_make", lambda name, scratch: made[name])
    with pytest.raises(BackendUnavailable) as err:
        backend_mod.get_backend("auto", scratch=tmp_path)
    text = str(err.value)
    assert "bwrap: user namespaces are disabled" in text and "podman: podman is not installed" in text
    assert "lightabaco doctor" in text
    with pytest.raises(BackendUnavailable, match="^no sandbox backend.*bwrap: user namespaces"):
        backend_mod.get_backend("bwrap", scratch=tmp_path)


def test_missing_bwrap_binary_says_how_to_install():
    report = probe_mod.probe_bwrap("/nonexistent/bwrap-xyz")
    assert not report.usable and "apt-get install bubblewrap" in report.reasons[0]


def test_kernel_knobs_are_explained(monkeypatch):
    values = {"/proc/sys/user/max_user_namespaces": "0",
              "/proc/sys/kernel/unprivileged_userns_clone": "0",
              "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"}
    monkeypatch.setattr(probe_mod, "_read", lambda path: values.get(path))
    problems = probe_mod.userns_problems()
    assert len(problems) == 3
    assert any("sysctl -w user.max_user_namespaces" in p for p in problems)
    assert any("AppArmor" in p for p in problems)


@pytest.mark.parametrize("stderr, words", [
    ("bwrap: Creating new namespace failed: nesting depth or /proc/sys/user/max_*_namespaces "
     "exceeded (ENOSPC)", "max_user_namespaces"),
    ("bwrap: setting up uid map: Permission denied", "AppArmor"),
    ("bwrap: Creating new namespace failed, likely because the kernel does not support user "
     "namespaces.  bwrap must be installed setuid on such systems.", "setuid"),
])
def test_bwrap_errors_become_advice(stderr, words):
    assert words in probe_mod._explain_bwrap_error(stderr)
