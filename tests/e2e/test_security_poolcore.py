"""Issue 9 (workers as slots over a shared pool) and issue 12 (worker hosts), end to end.

- Many actors at default settings: every READY actor lists READY workers (rows, not processes: none
  is evicted to make room), and messages to all of them complete on a pool of a few processes.
- Fresh copies of what Abaco's v2/v3 worker tests check: list workers at default settings, add workers
  (num=N), delete a worker, statuses READY/BUSY.
- Worker hosts (`lightabaco workers --database-url ... --api ... --home ...`, separate homes, one
  PostgreSQL database) share a burst with the API server's own pool; one starts with an empty image store
  and fetches the actor's image from the API's /v2/ with the copied worker credential, one with a forged
  credential runs nothing; SIGKILL of one host's process group
  mid-burst loses nothing (its leases expire and its messages run elsewhere), the executions and the
  workers list say which host ran what, and the live log of an execution on a worker host reaches the API.
"""

from __future__ import annotations

import os
import re
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.postgres import postgres_missing
from tests.fixtures.server import ROOT, import_test_images, make_home

pytestmark = [pytest.mark.e2e]


def workers_of(server: Any, aid: str) -> list[dict]:
    r = server.get(f"/actors/{aid}/workers")
    assert r.status_code == 200, r.text
    return r.json()["result"]


def wait_for(what: str, check: Any, timeout: float, server: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s\n"
                                 f"{server.log_tail() if server is not None else ''}")
        time.sleep(0.1)


def pool_processes(home: Path) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"lightabaco.workers.worker" in cmd and str(home).encode() in cmd:
            out.append(int(entry.name))
    return out


# -- many actors, default settings ------------------------------------------------------------------


def test_22_actors_at_default_settings_all_list_ready_workers_and_all_run(server_factory: Any) -> None:
    server = server_factory()  # default pool: the cores (at least 2)
    aids = [server.register(name=f"many-{i}")["id"] for i in range(22)]
    # The pool did not grow with the actors: a handful of processes serve all of them.
    assert len(pool_processes(server.home)) <= max(2, os.cpu_count() or 2)
    for aid in aids:
        ws = workers_of(server, aid)
        assert ws and all(w["status"] == "READY" for w in ws), (aid, ws)
    eids = {aid: server.send(aid, f"hello {aid}") for aid in aids}
    for aid, eid in eids.items():
        ex = server.wait_execution(aid, eid, timeout=120)
        assert ex["status"] == "COMPLETE" and ex["worker_id"] in {w["id"] for w in workers_of(server, aid)}
        assert f"hello {aid}" in server.logs(aid, eid)
    # Still listed afterwards: nothing was evicted to run the others.
    for aid in aids:
        assert [w for w in workers_of(server, aid) if w["status"] == "READY"], aid


# -- Abaco's worker checks (fresh copies) -----------------------------------------------------------


def test_abaco_worker_checks_at_default_settings(server_factory: Any) -> None:
    server = server_factory()
    aid = server.register("lightabaco/sleep")["id"]
    # test_list_workers: a READY actor lists its worker, READY, with Abaco's fields.
    ws = workers_of(server, aid)
    assert len(ws) == 1 and ws[0]["status"] == "READY"
    for key in ("id", "status", "image", "tenant", "create_time", "last_execution_time",
                "last_health_check_time", "location", "cid", "ch_name", "host_id"):
        assert key in ws[0], key
    r = server.get(f"/actors/{aid}/workers/{ws[0]['id']}")
    assert r.status_code == 200 and r.json()["result"]["id"] == ws[0]["id"]
    # test_add_worker: num is the total wanted.
    r = server.post(f"/actors/{aid}/workers", data={"num": 2})
    assert r.status_code == 200, r.text
    wait_for("two READY workers", lambda: len([w for w in workers_of(server, aid)
                                               if w["status"] == "READY"]) == 2, 20, server)
    # Statuses: a running execution makes its worker BUSY, then READY again.
    eid = server.send(aid, "busy", params={"ITERATIONS": "30", "SLEEP": "0.1"})
    server.wait_execution(aid, eid, ("RUNNING",))
    ex = server.get(f"/actors/{aid}/executions/{eid}").json()["result"]
    busy = wait_for("a BUSY worker", lambda: [w for w in workers_of(server, aid) if w["status"] == "BUSY"],
                    10, server)
    assert busy[0]["id"] == ex["worker_id"]
    server.wait_execution(aid, eid, timeout=60)
    wait_for("workers READY again", lambda: all(w["status"] == "READY" for w in workers_of(server, aid)),
             10, server)
    # test_delete_worker: one of the two goes, the other stays.
    victim = workers_of(server, aid)[0]["id"]
    r = server.delete(f"/actors/{aid}/workers/{victim}")
    assert r.status_code == 200, r.text
    wait_for("the deleted worker gone", lambda: [w["id"] for w in workers_of(server, aid)] != [] and
             victim not in [w["id"] for w in workers_of(server, aid)], 10, server)
    assert len(workers_of(server, aid)) == 1
    # A stateful actor keeps exactly one worker and runs strictly in order.
    sid = server.register(stateless=False)["id"]
    sent = [server.send(sid, f"m{i}") for i in range(6)]
    for eid in sent:
        server.wait_execution(sid, eid, timeout=60)
    starts = [server.get(f"/actors/{sid}/executions/{e}").json()["result"]["start_time"] for e in sent]
    assert starts == sorted(starts)
    assert len(workers_of(server, sid)) == 1


# -- worker hosts ------------------------------------------------------------------------------------


def start_host(url: str, api: str, name: str, layouts: Path | None, lease_s: float,
               credential: str | None = None, pool: int = 2) -> tuple[subprocess.Popen, Path]:
    """A worker host. `layouts`: pre-populate its image store; None: an empty store (it fetches from the
    API's /v2/). `credential`: written to <home>/worker-token, as the operator copies the API's."""
    home = make_home(f"lab-host-{name}-")
    if layouts is not None:
        import_test_images(home, layouts)
    if credential is not None:
        (home / "worker-token").write_text(credential + "\n")
        (home / "worker-token").chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTABACO_")}
    env.update(PYTHONPATH=str(ROOT), LIGHTABACO_LEASE_S=str(lease_s))
    log = open(home / "host.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "lightabaco", "workers", "--database-url", url,
                             "--api", api, "--home", str(home), "--pool", str(pool), "--host-name", name],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: killed as a whole below
    log.close()
    return proc, home


@pytest.mark.skipif(bool(postgres_missing()), reason=postgres_missing() or "x")
def test_two_worker_hosts_share_a_burst_and_a_killed_host_loses_nothing(
        server_factory: Any, postgres_cluster: Any, test_image_layouts: Path) -> None:
    url = postgres_cluster.create_database("hosts")
    lease_s = 4.0
    server = server_factory(database_url=url, workers=1, lease_s=lease_s)
    credential = (server.home / "worker-token").read_text().strip()
    # host-a: images pre-imported; host-b: an EMPTY store and the copied worker credential (it fetches the
    # actor's image from the API's /v2/); host-c: an empty store and a forged credential (it must run
    # nothing: /v2/ refuses it, and its claims are given back to the others).
    hosts = {"host-a": start_host(url, server.url, "host-a", test_image_layouts, lease_s),
             "host-b": start_host(url, server.url, "host-b", None, lease_s, credential=credential),
             "host-c": start_host(url, server.url, "host-c", None, lease_s, credential="f" * 43, pool=1)}
    try:
        aid = server.register("lightabaco/sleep", max_workers=8)["id"]
        assert server.post(f"/actors/{aid}/workers", data={"num": 6}).status_code == 200
        wait_for("6 READY workers", lambda: len([w for w in workers_of(server, aid)
                                                 if w["status"] == "READY"]) >= 6, 30, server)
        eids = [server.send(aid, f"b{i}", params={"ITERATIONS": "15", "SLEEP": "0.2"}) for i in range(14)]

        def running_on(name: str) -> list[dict]:
            out = []
            for eid in eids:
                ex = server.get(f"/actors/{aid}/executions/{eid}").json()["result"]
                if ex["status"] == "RUNNING" and ex.get("host") == name:
                    out.append(ex)
            return out

        on_a = wait_for("an execution running on host-a", lambda: running_on("host-a"), 60, server)
        # The live log of an execution on a worker host reaches the API (copied into the database).
        wait_for("a live log from host-a", lambda: "sleeper start" in server.logs(aid, on_a[0]["id"]), 10, server)
        busy_hosts = {w.get("host") for w in workers_of(server, aid) if w["status"] == "BUSY"}
        assert "host-a" in busy_hosts, busy_hosts
        proc_a, home_a = hosts["host-a"]
        os.killpg(proc_a.pid, signal.SIGKILL)
        proc_a.wait()
        wait_for("host-a's processes gone", lambda: not pool_processes(home_a), 5)
        done = [server.wait_execution(aid, eid, timeout=180) for eid in eids]
        assert all(ex["status"] == "COMPLETE" for ex in done), [ex["status"] for ex in done]
        ran_on = {ex["host"] for ex in done}
        assert "host-b" in ran_on, ran_on
        assert "host-c" not in ran_on, "a host with a forged credential got the image"
        proc_b, home_b = hosts["host-b"]
        host_b_log = (home_b / "host.log").read_text(errors="replace")
        assert re.search(r"pulled \S*lightabaco/sleep\S* from the API server", host_b_log), host_b_log[-3000:]
        from lightabaco.images import ImageStore

        assert ImageStore(home_b / "images").get("lightabaco/sleep").config_digest == \
            ImageStore(server.home / "images").get("lightabaco/sleep").config_digest, "host-b's copy is the API's image"
        host_c_log = (hosts["host-c"][1] / "host.log").read_text(errors="replace")
        assert "could not fetch image" in host_c_log, host_c_log[-3000:]
        from lightabaco.sandbox.errors import ImageNotFound

        with pytest.raises(ImageNotFound):
            ImageStore(hosts["host-c"][1] / "images").get("lightabaco/sleep")
        for ex in done:
            assert "done" in server.logs(aid, ex["id"]), ex["id"]
        # What host-a was running when it died ran again elsewhere, under the same execution id.
        rerun = [ex for ex in done if ex["id"] in {e["id"] for e in on_a}]
        assert rerun and all(ex["host"] != "host-a" for ex in rerun)
    finally:
        for proc, home in hosts.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            shutil.rmtree(home, ignore_errors=True)
