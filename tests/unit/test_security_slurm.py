"""Issue 12 (worker hosts' images, Slurm pilots), unit level: the worker credential file, the credential
parser of the /v2/ endpoint, host identity, and the pilot manager's sizing against a fake Slurm."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightabaco.config import Settings
from lightabaco.http.registry_api import presented_credential
from lightabaco.images import credential as worker_credential
from lightabaco.slurm.identity import describe, host_identity
from lightabaco.slurm.pilots import PilotConfig, PilotManager, SlurmError, wanted_pilots


# -- the worker credential ---------------------------------------------------------------------------

def test_worker_credential_is_private_random_and_never_replaced(tmp_path: Path) -> None:
    s = SimpleNamespace(home=tmp_path, worker_token_file="")
    first = worker_credential.ensure(s)
    path = tmp_path / "worker-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32 and worker_credential.ensure(s) == first == worker_credential.load(s)
    other = SimpleNamespace(home=tmp_path / "b", worker_token_file="")
    assert worker_credential.ensure(other) != first, "one credential per instance"


def test_worker_credential_refuses_symlinks_and_empty_files(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("a-secret-someone-else-controls-xxxxxxxx")
    os.symlink(target, tmp_path / "worker-token")
    s = SimpleNamespace(home=tmp_path, worker_token_file="")
    with pytest.raises(OSError):  # O_NOFOLLOW: a planted link is not followed (ELOOP)
        worker_credential.load(s)
    os.unlink(tmp_path / "worker-token")
    (tmp_path / "worker-token").write_text("\n")
    with pytest.raises(ValueError, match="delete the file"):
        worker_credential.ensure(s)


def test_matches_needs_the_exact_credential() -> None:
    assert worker_credential.matches("s3cret-credential", "s3cret-credential")
    for bad in (None, "", "s3cret-credentia", "s3cret-credential ", "S3CRET-CREDENTIAL"):
        assert not worker_credential.matches("s3cret-credential", bad)


def test_presented_credential_reads_basic_and_bearer_only() -> None:
    basic = base64.b64encode(b"any-user:the:password").decode()
    assert presented_credential(f"Basic {basic}") == "the:password"
    assert presented_credential("Bearer tok") == "tok"
    assert presented_credential("bearer   tok  ") == "tok"
    for bad in ("", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nouser").decode(),
                "Digest x", "Token tok", "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
        assert presented_credential(bad) in (None, "x") and presented_credential(bad) != "tok"
    assert presented_credential("Basic " + base64.b64encode(b"u:").decode()) is None


# -- where a worker host runs ------------------------------------------------------------------------

def test_host_identity_reads_slurm_variables() -> None:
    inside = host_identity({"SLURM_JOB_ID": "4242", "SLURMD_NODENAME": "node07"})
    assert inside["slurm_job_id"] == "4242" and inside["node"] == "node07" and inside["host"]
    assert describe(inside) == "node07 (Slurm job 4242)"
    outside = host_identity({})
    assert outside["slurm_job_id"] is None and outside["node"] is None
    assert describe(outside) == outside["host"]


# -- the pilot manager against a fake Slurm ----------------------------------------------------------

class FakeSlurm:
    def __init__(self) -> None:
        self.env = {"PATH": "/usr/bin"}
        self.jobs_: dict[str, str] = {}
        self.next = 100
        self.submits: list[tuple[list[str], dict[str, str]]] = []
        self.cancels: list[list[str]] = []

    def submit(self, argv: list[str], env: dict[str, str]) -> str:
        self.next += 1
        self.jobs_[str(self.next)] = "PENDING"
        self.submits.append((argv, env))
        return str(self.next)

    def jobs(self, name: str) -> dict[str, str]:
        return dict(self.jobs_)

    def cancel(self, ids: list[str]) -> None:
        self.cancels.append(list(ids))
        for j in ids:
            self.jobs_.pop(j, None)


def _cfg(tmp_path: Path, **kw: object) -> PilotConfig:
    base = dict(job_name="lightabaco-test", directory=tmp_path / "slurm", api_url="http://10.0.0.1:8000",
                token_file=tmp_path / "worker-token", partition="debug", account="lab42", time_limit="00:30:00",
                max_jobs=3, min_jobs=0, messages_per_job=4, cpus_per_job=2, idle_s=60.0, poll_s=1.0,
                database_url="postgresql://u@db/lightabaco")
    base.update(kw)
    return PilotConfig(**base)  # type: ignore[arg-type]


def test_wanted_pilots_follows_the_queue_within_bounds(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, min_jobs=1, max_jobs=3, messages_per_job=4)
    assert [wanted_pilots(w, r, cfg) for w, r in ((0, 0), (1, 0), (4, 0), (5, 0), (3, 6), (1000, 0))] == \
        [1, 1, 1, 2, 3, 3]


def test_pilots_are_submitted_for_a_queue_and_cancelled_when_idle(tmp_path: Path) -> None:
    depth = [9, 0]
    now = [0.0]
    slurm = FakeSlurm()
    m = PilotManager(_cfg(tmp_path), slurm=slurm, depth=lambda: tuple(depth), clock=lambda: now[0])  # type: ignore[arg-type]
    assert m.step()["submitted"] == ["101", "102", "103"]  # ceil(9/4)=3, capped at max 3
    assert m.step()["submitted"] == [], "pending pilots count: no second round of submissions"
    argv, env = slurm.submits[0]
    assert ["--partition", "debug"] == argv[argv.index("--partition"):argv.index("--partition") + 2]
    assert "--account" in argv and "lab42" in argv and "00:30:00" in argv and argv[-1].endswith("pilot.sh")
    assert env["LIGHTABACO_DATABASE_URL"] == "postgresql://u@db/lightabaco"
    script = Path(argv[-1]).read_text()
    assert "postgresql" not in script and "lightabaco.slurm.pilot" in script, "no secret in the script"
    assert stat.S_IMODE(Path(argv[-1]).stat().st_mode) == 0o700
    slurm.jobs_.update({"101": "RUNNING", "102": "RUNNING"})
    depth[:] = [0, 3]  # 3 running: one pilot is still needed
    assert m.step()["cancelled"] == []
    now[0] = 59.0
    assert m.step()["cancelled"] == [], "not idle long enough"
    now[0] = 61.0
    assert m.step()["cancelled"] == ["103", "102"], "the pending one first, then the newest running one"
    depth[:] = [0, 0]
    now[0] = 200.0
    m.step()
    now[0] = 261.0
    assert m.step()["cancelled"] == ["101"]
    assert slurm.jobs_ == {}


def test_a_burst_in_the_idle_window_keeps_the_pilots(tmp_path: Path) -> None:
    depth = [8, 0]
    now = [0.0]
    slurm = FakeSlurm()
    m = PilotManager(_cfg(tmp_path), slurm=slurm, depth=lambda: tuple(depth), clock=lambda: now[0])  # type: ignore[arg-type]
    m.step()
    depth[:] = [0, 0]
    m.step()
    now[0] = 30.0
    depth[:] = [8, 0]
    m.step()  # needed again: the idle clock restarts
    depth[:] = [0, 0]
    now[0] = 70.0
    assert m.step()["cancelled"] == []
    now[0] = 131.0
    assert sorted(m.step()["cancelled"]) == ["101", "102"]


def test_bounds_are_checked_from_settings(tmp_path: Path) -> None:
    s = Settings.from_env(environ={}, home=tmp_path, slurm_min_jobs=3, slurm_max_jobs=2)
    with pytest.raises(SlurmError, match="min <= max"):
        PilotConfig.from_settings(s)
    s = Settings.from_env(environ={}, home=tmp_path, slurm_max_jobs=2, host="0.0.0.0", port=8123)
    cfg = PilotConfig.from_settings(s)
    assert cfg.api_url == "http://127.0.0.1:8123" and cfg.directory == tmp_path / "slurm"
    assert (tmp_path / "worker-token").exists(), "the credential exists before the first pilot starts"
    other = PilotConfig.from_settings(Settings.from_env(environ={}, home=tmp_path / "x"))
    assert other.job_name != cfg.job_name, "two instances never share (or cancel) each other's pilots"


def test_pilot_copies_the_instance_keys_privately_and_never_through_a_link(tmp_path: Path) -> None:
    """A pilot's node-local home needs the instance's jwt.key (actor tokens the API accepts) and
    config.key (secret configs): copied 0600; a key that is a symlink in the source is not followed."""
    from lightabaco.slurm.pilot import copy_instance_keys

    src, home = tmp_path / "instance", tmp_path / "node"
    src.mkdir()
    home.mkdir()
    (src / "jwt.key").write_bytes(b"signing-secret")
    outside = tmp_path / "outside-secret"
    outside.write_bytes(b"not for the pilot")
    (src / "config.key").symlink_to(outside)
    with pytest.raises(OSError):  # ELOOP from O_NOFOLLOW: the link is refused, not read
        copy_instance_keys(src, home)
    assert (home / "jwt.key").read_bytes() == b"signing-secret"
    assert (home / "jwt.key").stat().st_mode & 0o777 == 0o600
    assert not (home / "config.key").exists()
    (src / "config.key").unlink()
    (src / "config.key").write_bytes(b"fernet-key")
    assert copy_instance_keys(src, home) == ["jwt.key", "config.key"]
    assert (home / "config.key").read_bytes() == b"fernet-key"
