"""Issue 9 end to end: a server that dies leaves nothing behind; health; drain; ERROR actors; the pool.

Every way of dying is tried on a live server while executions run: SIGKILL of the main process alone
(the OOM killer's choice, or `kill -9`), SIGKILL of every process of the server at once (a cgroup kill,
`systemctl kill`), and SIGKILL of one worker in the middle of an execution. Within 5 s no process of
that server may remain: found by the server's home (in the argv and environment of its workers,
pullers and helpers) or by the actor id in a sandbox's environment.
"""

from __future__ import annotations

import getpass
import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.processes import describe_processes, processes_mentioning

ORPHAN_DEADLINE_S = 5.0


def wait_gone(needles: tuple[bytes, ...], deadline_s: float = ORPHAN_DEADLINE_S) -> list[int]:
    deadline = time.monotonic() + deadline_s
    while (left := processes_mentioning(*needles)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def busy_server(server_factory: Any) -> tuple[Any, str, list[str]]:
    """A server with 3 workers, each running a sandbox (so helpers and sandboxes exist)."""
    server = server_factory(workers=3)
    aid = server.register("lightabaco/sleep", max_workers=3)["id"]
    eids = [server.send(aid, "x", params={"ITERATIONS": "1", "SLEEP": "4"}) for _ in range(6)]
    deadline = time.monotonic() + 30
    while len(processes_mentioning(f"_abaco_actor_id={aid}".encode())) < 2:
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)
    return server, aid, eids


def needles_of(server: Any, aid: str) -> tuple[bytes, ...]:
    return (str(server.home).encode(), f"_abaco_actor_id={aid}".encode())


def test_sigkill_of_the_main_process_alone_leaves_no_orphan(server_factory: Any) -> None:
    server, aid, _ = busy_server(server_factory)
    before = processes_mentioning(*needles_of(server, aid))
    assert len(before) >= 5, describe_processes(before)  # server, workers, helpers, sandboxes
    server.kill()
    left = wait_gone(needles_of(server, aid))
    assert not left, f"outlived the server by {ORPHAN_DEADLINE_S} s: {describe_processes(left)}"


def test_sigkill_of_every_process_at_once_leaves_no_orphan(server_factory: Any) -> None:
    server, aid, _ = busy_server(server_factory)
    pids = processes_mentioning(*needles_of(server, aid))
    for pid in pids:  # what a cgroup kill does: everything at once, in no particular order
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait()
    left = wait_gone(needles_of(server, aid))
    assert not left, describe_processes(left)


def test_sigkill_of_a_worker_mid_execution_kills_its_sandbox_and_reruns(server_factory: Any) -> None:
    server, aid, eids = busy_server(server_factory)
    workers = [p for p in processes_mentioning(str(server.home).encode())
               if b"lightabaco.workers.worker" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert workers
    victim = workers[0]
    family = [p for p in processes_mentioning(*needles_of(server, aid)) if is_descendant(p, victim)]
    assert family, "the worker runs no sandbox"
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + ORPHAN_DEADLINE_S
    while (left := [p for p in family if Path(f"/proc/{p}").exists() and not zombie(p)]) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, describe_processes(left)
    for eid in eids:  # the killed worker's execution runs again; nothing is lost
        ex = server.wait_execution(aid, eid, timeout=60)
        assert ex["status"] == "COMPLETE"


def zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def is_descendant(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except OSError:
            return False
        if pid == ancestor:
            return True
    return False


# ---------------------------------------------------------------------------------------------------
# Actors in ERROR, health, graceful shutdown


def put_in_error(server: Any, aid: str, why: str) -> None:
    """What a failed image pull or a crash loop leaves: the actor's row in ERROR with a reason."""
    import sqlite3

    con = sqlite3.connect(server.home / "lightabaco.db", timeout=10)
    with con:
        con.execute('UPDATE "actor" SET "status" = ?, "status_message" = ? WHERE "id" = ?',
                    ("ERROR", why, aid))
    con.close()


def test_a_synchronous_message_to_an_actor_in_error_answers_at_once(server_factory: Any) -> None:
    server = server_factory(sync_timeout_s=20)
    aid = server.register("abacosamples/test")["id"]
    put_in_error(server, aid, "Error pulling image example/gone - exception: not found")
    t0 = time.monotonic()
    r = server.post(f"/actors/{aid}/messages", params={"_abaco_synchronous": "true"},
                    data={"message": "hi"})
    assert time.monotonic() - t0 < 5
    assert r.status_code == 400, r.text
    assert "ERROR" in r.json()["message"] and "example/gone" in r.json()["message"]
    # Asynchronous messages still queue, as in Abaco.
    r = server.post(f"/actors/{aid}/messages", data={"message": "later"})
    assert r.status_code == 200, r.text
    eid = r.json()["result"]["execution_id"]
    assert server.get(f"/actors/{aid}/executions/{eid}").json()["result"]["status"] == "SUBMITTED"


def test_health_needs_no_credentials_and_names_no_user(server_factory: Any) -> None:
    import requests

    server = server_factory()
    aid = server.register("abacosamples/test")["id"]
    server.wait_execution(aid, server.send(aid, "x"))
    r = requests.get(server.url + "/health", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["checks"]["database"]["ok"] and body["checks"]["sandbox"]["ok"]
    assert body["pool"]["size"] >= 1 and body["pool"]["busy"] >= 0
    assert body["queue"] == {"waiting": 0, "running": 0}
    assert aid not in r.text and "admin" not in r.text and str(server.home) not in r.text
    # Only /health: the Abaco tree still needs a token.
    assert requests.get(server.url + "/actors", timeout=10).status_code in (400, 401)


def test_sigterm_drains_running_executions_and_refuses_new_messages(server_factory: Any) -> None:
    import requests

    server = server_factory(workers=2, drain_grace_s=20)
    aid = server.register("lightabaco/sleep")["id"]
    eid = server.send(aid, "x", params={"ITERATIONS": "1", "SLEEP": "3"})
    server.wait_execution(aid, eid, statuses=("RUNNING",))
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    r = server.post(f"/actors/{aid}/messages", data={"message": "too late"})
    assert r.status_code == 503 and "shutting down" in r.json()["message"], r.text
    h = requests.get(server.url + "/health", timeout=10)
    assert h.status_code == 503 and h.json()["draining"] is True
    assert server.proc.wait(timeout=30) == 0
    server.start()
    ex = server.get(f"/actors/{aid}/executions/{eid}").json()["result"]
    assert ex["status"] == "COMPLETE" and "done" in server.logs(aid, eid), ex  # finished in the grace


def test_sigterm_after_the_grace_period_requeues_what_still_runs(server_factory: Any) -> None:
    server = server_factory(workers=2, drain_grace_s=1)
    aid = server.register("lightabaco/sleep")["id"]
    eid = server.send(aid, "x", params={"ITERATIONS": "1", "SLEEP": "8"})
    server.wait_execution(aid, eid, statuses=("RUNNING",))
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=20) == 0
    assert time.monotonic() - t0 < 8, "the drain waited for the execution instead of the grace period"
    left = wait_gone((str(server.home).encode(), f"_abaco_actor_id={aid}".encode()))
    assert not left, describe_processes(left)
    server.start()
    ex = server.wait_execution(aid, eid, timeout=60)  # re-queued, ran again after the restart
    assert ex["status"] == "COMPLETE" and "done" in server.logs(aid, eid)


# ---------------------------------------------------------------------------------------------------
# Tags that move


def test_an_actor_follows_its_tag_when_the_image_is_rebuilt(server_factory: Any, tmp_path: Path) -> None:
    from lightabaco.images import ImageStore
    from tests.fixtures.oci import busybox_layout

    server = server_factory()
    store = ImageStore(server.home / "images")
    busybox_layout(tmp_path / "v1", script='#!/bin/sh\necho "version one"\n')
    busybox_layout(tmp_path / "v2", script='#!/bin/sh\necho "version two"\n')
    store.import_path(tmp_path / "v1", tag="lightabaco/moving")
    actor = server.register("lightabaco/moving")
    aid = actor["id"]
    eid = server.send(aid, "x")
    server.wait_execution(aid, eid)
    assert "version one" in server.logs(aid, eid)
    first = server.get(f"/actors/{aid}").json()["result"]
    assert first["image_digest"] == store.digest_of("lightabaco/moving")
    store.import_path(tmp_path / "v2", tag="lightabaco/moving")  # a rebuild under the same tag
    new_digest = store.digest_of("lightabaco/moving")
    assert new_digest != first["image_digest"]
    deadline = time.monotonic() + 30
    while True:
        now = server.get(f"/actors/{aid}").json()["result"]
        if now["revision"] > first["revision"] and now["image_digest"] == new_digest \
                and now["status"] == "READY":
            break
        assert time.monotonic() < deadline, (now, server.log_tail())
        time.sleep(0.2)
    eid = server.send(aid, "x")
    server.wait_execution(aid, eid)
    assert "version two" in server.logs(aid, eid)


# ---------------------------------------------------------------------------------------------------
# Upgrade in place

OLD_DATABASE = Path(__file__).resolve().parents[1] / "data" / "home-afe78b9.db"
# Made by release afe78b9 (`--auth none`): one stateful actor "from-afe78b9" whose image was not in the
# store (so it is in ERROR), with one message still queued.


def test_a_database_from_the_previous_release_opens_and_works(test_image_layouts: Path) -> None:
    import shutil as sh

    from tests.fixtures.server import LiveServer, free_port, import_test_images, make_home

    home = make_home()
    try:
        import_test_images(home, test_image_layouts)
        sh.copy(OLD_DATABASE, home / "lightabaco.db")
        # The file was made by root; an upgrade in place is run by the home's own user, who owns its
        # actors (with --auth none the caller is the OS user), so hand them to whoever runs the test.
        me = getpass.getuser()
        with closing(sqlite3.connect(home / "lightabaco.db")) as con, con:
            con.execute("UPDATE actor SET owner = ? WHERE owner = 'root'", (me,))
            con.execute("UPDATE execution SET executor = ? WHERE executor = 'root'", (me,))
            con.execute("UPDATE sharing_permission SET username = ? WHERE username = 'root'", (me,))
        server = LiveServer(home=home, port=free_port(), settings={"auth": "none"}).start()
        try:
            actors = server.get("/actors").json()["result"]
            old = [a for a in actors if a["name"] == "from-afe78b9"]
            assert len(old) == 1 and "image_digest" in old[0], actors
            aid = old[0]["id"]
            queued = server.get(f"/actors/{aid}/executions").json()["result"]["executions"]
            assert [e["status"] for e in queued] == ["SUBMITTED"]
            r = server.put(f"/actors/{aid}", json={"image": "abacosamples/test", "stateless": False,
                                                   "force": True})
            assert r.status_code == 200, r.text
            server.wait_actor(aid, "READY")
            ex = server.wait_execution(aid, queued[0]["id"])  # the old message runs on the new code
            assert ex["status"] == "COMPLETE"
            assert server.wait_execution(aid, server.send(aid, "new"))["status"] == "COMPLETE"
        finally:
            server.stop()
    finally:
        sh.rmtree(home, ignore_errors=True)
