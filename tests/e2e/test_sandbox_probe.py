"""The real probes on this host."""

from __future__ import annotations

import pytest

from lightabaco.sandbox.backend import get_backend, probe_all

pytestmark = pytest.mark.e2e


def test_probe_all_reports_each_backend():
    reports = {r.backend: r for r in probe_all()}
    assert set(reports) == {"bwrap", "podman"}
    bwrap = reports["bwrap"]
    if not bwrap.usable:
        pytest.skip("bwrap is not usable here: " + "; ".join(bwrap.reasons))
    assert bwrap.version and bwrap.features["json_status"] and bwrap.features["block_fd"]
    assert any("watchdog" in n or "cgroup" in n for n in bwrap.notes)
    for report in reports.values():
        assert report.usable or report.reasons  # never "unusable" without a reason


def test_auto_picks_bwrap_here(sandbox_dir):
    backend = get_backend("auto", scratch=sandbox_dir / "exec")
    assert backend.name == "bwrap"
