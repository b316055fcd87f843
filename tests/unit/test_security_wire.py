"""Worker hosts wired to the image endpoint and to Slurm (issue 12): where a host's credential comes
from, what it does with a stale copy of a tag, what a pilot starts, and how an execution records the
node and Slurm job it ran in."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from lightabaco.abaco import actors
from lightabaco.images import credential, remote
from lightabaco.sandbox.errors import ImageError, ImageNotFound
from lightabaco.store.models import Actor
from lightabaco.workers import imagesource
from lightabaco.workers.worker import PoolProcess


def test_fetch_without_a_credential_says_where_to_copy_it_and_contacts_nobody(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    called = []
    monkeypatch.setattr(remote, "pull_from_api", lambda *a, **k: called.append(a))
    services = types.SimpleNamespace(settings=types.SimpleNamespace(home=tmp_path, worker_token_file=""),
                                     images=object())
    with pytest.raises(ImageError, match=str(tmp_path / "worker-token")):
        remote.fetch(services, "abacosamples/wc", "http://127.0.0.1:1")
    (tmp_path / "worker-token").write_text("short\n")
    with pytest.raises(ImageError, match="too short"):
        remote.fetch(services, "abacosamples/wc", "http://127.0.0.1:1")
    assert called == [], "no request goes out without a usable credential"


def test_fetch_presents_the_file_credential_and_the_expected_image(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "elsewhere" / "copied-token"
    token_file.parent.mkdir()
    settings = types.SimpleNamespace(home=tmp_path, worker_token_file=str(token_file))
    token_file.write_text("c" * 43 + "\n")
    got = {}

    def pull(store, api, cred, ref, *, image_id=None):
        got.update(store=store, api=api, cred=cred, ref=ref, image_id=image_id)
        return types.SimpleNamespace(config_digest="sha256:" + "1" * 64)

    monkeypatch.setattr(remote, "pull_from_api", pull)
    store = object()
    remote.fetch(types.SimpleNamespace(settings=settings, images=store), "me/img:1", "http://api:8000",
                 image_id="sha256:" + "1" * 64)
    assert got == {"store": store, "api": "http://api:8000", "cred": "c" * 43, "ref": "me/img:1",
                   "image_id": "sha256:" + "1" * 64}
    assert credential.path_of(settings) == token_file


class FakeStore:
    def __init__(self, digest: str | None) -> None:
        self.digest = digest

    def get(self, ref: str):
        if self.digest is None:
            raise ImageNotFound(ref)
        return types.SimpleNamespace(config_digest=self.digest)


def _actor(service_env, digest: str | None) -> Actor:
    a = actors.create_actor(service_env.services, service_env.admin(), {"image": "me/img", "name": "x"})
    Actor.update(image_digest=digest).where(Actor.id == a["id"]).execute()
    return Actor.get(Actor.id == a["id"])


def test_a_worker_host_does_not_run_its_stale_copy_of_a_moved_tag(service_env,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = "sha256:" + "0" * 64, "sha256:" + "9" * 64
    actor = _actor(service_env, new)  # the revision's image, as the API server prepared it
    fetched = []

    def fetcher(services, ref, api, image_id=None):
        fetched.append((ref, api, image_id))
        return types.SimpleNamespace(config_digest=new)

    imagesource.install(fetcher)
    try:
        services = service_env.services
        services.settings.images_source = "http://api:8000"
        monkeypatch.setattr(services, "_images", FakeStore(old))  # this host's copy: the tag's old image
        image = PoolProcess(services, 0).image_for(actor)
        assert image.config_digest == new and fetched == [("me/img", "http://api:8000", new)]
        assert Actor.get(Actor.dbid == actor.dbid).image_digest == new, "the old image is never recorded"
        # The fetch fails (API unreachable, or the tag moved again): nothing runs here, rather than the old image.
        imagesource.install(lambda *a, **k: None)
        assert PoolProcess(services, 1).image_for(actor) is None
        # One machine (no images_source): the local store is the truth, nothing is fetched.
        services.settings.images_source = ""
        imagesource.install(fetcher)
        fetched.clear()
        monkeypatch.setattr(services, "_images", FakeStore(new))
        assert PoolProcess(services, 2).image_for(actor).config_digest == new and fetched == []
    finally:
        imagesource.install(None)


def test_a_missing_image_is_fetched_with_the_revisions_image_id(service_env, monkeypatch: pytest.MonkeyPatch) -> None:
    actor = _actor(service_env, None)
    calls = []
    imagesource.install(lambda services, ref, api, image_id=None: calls.append(image_id) or
                        types.SimpleNamespace(config_digest="sha256:" + "5" * 64))
    try:
        service_env.services.settings.images_source = "http://api:8000"
        monkeypatch.setattr(service_env.services, "_images", FakeStore(None))
        assert PoolProcess(service_env.services, 0).image_for(actor) is not None and calls == [None]
    finally:
        imagesource.install(None)


def test_under_slurm_the_host_name_records_node_and_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightabaco.server import worker_host_settings

    for k in ("LIGHTABACO_HOST_NAME", "SLURM_JOB_ID", "SLURMD_NODENAME"):
        monkeypatch.delenv(k, raising=False)
    outside = worker_host_settings("postgresql://db/x", "http://api:8000", tmp_path)
    assert outside.host_name == "" and outside.images_source == "http://api:8000"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURMD_NODENAME", "node07")
    inside = worker_host_settings("postgresql://db/x", "http://api:8000", tmp_path)
    assert inside.host_name == "node07 (Slurm job 4242)" == inside.host_id()
    assert inside.to_env()["LIGHTABACO_HOST_NAME"] == "node07 (Slurm job 4242)", "pool processes inherit it"
    named = worker_host_settings("postgresql://db/x", "http://api:8000", tmp_path, host_name="mine")
    assert named.host_name == "mine", "an operator's --host-name wins"
    # The database URL may come from the environment (a pilot keeps it off the command line).
    monkeypatch.setenv("LIGHTABACO_DATABASE_URL", "postgresql://db/from-env")
    assert worker_host_settings(None, "http://api:8000", tmp_path).database_url == "postgresql://db/from-env"


def test_a_pilot_starts_the_worker_host_without_secrets_on_its_command_line(tmp_path: Path) -> None:
    from lightabaco.slurm.pilot import worker_host_argv, worker_host_env

    argv = worker_host_argv("http://login:8000", tmp_path / "h", 3)
    assert argv[1:] == ["-m", "lightabaco", "workers", "--api", "http://login:8000", "--home", str(tmp_path / "h"),
                        "--pool", "3"]
    env = worker_host_env(tmp_path / "h", tmp_path / "tok",
                          {"LIGHTABACO_DATABASE_URL": "postgresql://u:secret@db/x", "PATH": "/bin"})
    assert env["LIGHTABACO_DATABASE_URL"] == "postgresql://u:secret@db/x" and "secret" not in " ".join(argv)
    assert env["LIGHTABACO_WORKER_TOKEN_FILE"] == str(tmp_path / "tok") and env["LIGHTABACO_HOME"] == str(tmp_path / "h")


def test_the_workers_verb_takes_the_database_url_from_the_environment_only_with_api(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import lightabaco.server as server
    from lightabaco.cli.commands import main

    started = []
    monkeypatch.setattr(server, "worker_host", lambda *a, **k: started.append(k["settings"]))
    monkeypatch.setenv("LIGHTABACO_DATABASE_URL", "postgresql://db/from-env")
    monkeypatch.delenv("LIGHTABACO_WORKER_TOKEN_FILE", raising=False)
    assert main(["workers", "--home", str(tmp_path)]) != 0 and started == [], "no actor, no --api: usage"
    assert main(["workers", "--api", "http://api:8000", "--home", str(tmp_path), "--pool", "1"]) == 0
    assert started[0].database_url == "postgresql://db/from-env" and started[0].images_source == "http://api:8000"
    assert "worker-token" in capsys.readouterr().err, "a missing credential is reported at start"


def test_a_new_message_rings_the_pool_once_not_each_idle_slot(service_env) -> None:
    from lightabaco.abaco import messages
    from lightabaco.abaco import workers as records
    from lightabaco.store.models import Worker

    s, admin = service_env.services, service_env.admin()
    a = actors.create_actor(s, admin, {"image": "img", "name": "rung", "max_workers": 3})
    row = Actor.get(Actor.id == a["id"])
    records.request_worker(s, row)
    records.request_worker(s, row)
    Worker.update(status="READY").where(Worker.actor_dbid == row.dbid).execute()
    assert Worker.select().where(Worker.actor_dbid == row.dbid).count() == 3
    s.notifier.calls.clear()
    messages.send_message(s, admin, a["id"], "hello", messages.STR, {})
    assert s.notifier.calls == [("actor", row.dbid)], s.notifier.calls
    # every slot BUSY: nobody is rung (the busy pool processes look at the mailbox when they finish)
    Worker.update(status="BUSY").where(Worker.actor_dbid == row.dbid).execute()
    s.notifier.calls.clear()
    messages.send_message(s, admin, a["id"], "again", messages.STR, {})
    assert s.notifier.calls == []


def test_the_doorbell_notifier_rings_slots_only_for_control(tmp_path: Path) -> None:
    from lightabaco.workers.notify import DoorbellNotifier

    rung = []
    n = DoorbellNotifier(tmp_path, pool=2)
    n.ringer = types.SimpleNamespace(ring=lambda name, payload: rung.append((name, payload)))
    n.wake_actor("x")
    n.wake_worker("W1", b"kill")
    n.wake_worker("W2", b"m")  # no conversion shim any more: a slot's bell gets what it is sent
    assert rung == [("pool-0", b"m"), ("pool-1", b"m"), ("w-W1", b"kill"), ("w-W2", b"m")]
