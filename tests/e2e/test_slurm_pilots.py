"""Issue 12, Slurm pilots, with real parts: a one-node Slurm cluster (tests/fixtures/slurm.py), PostgreSQL
(tests/fixtures/postgres.py) and `serve --slurm`. Messages queue -> pilot jobs are submitted -> each pilot
runs a worker host (`lightabaco workers --api`) that fetches the actor's image from the API's /v2/ endpoint
into its node-local home and executes the messages, each execution recording the node and the Slurm job id
-> once idle, the pilots are cancelled."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest

from tests.fixtures.postgres import postgres_missing
from tests.fixtures.server import LiveServer, free_port, import_test_images, make_home
from tests.fixtures.slurm import slurm_missing


def _wait(pred, timeout: float, what: str, server: LiveServer):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                     for p in sorted((server.home / "slurm").glob("pilot-*.log")))
    raise AssertionError(f"{what} did not happen in {timeout:g} s\n{server.log_tail(40)}\n{logs}")


@pytest.mark.skipif(bool(slurm_missing() or postgres_missing()), reason=slurm_missing() or postgres_missing())
def test_pilots_follow_the_queue_run_messages_and_are_cancelled_when_idle(slurm_cluster, postgres_cluster,
                                                                          test_image_layouts: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))  # the server's sbatch/squeue/scancel use it
    home = make_home()
    import_test_images(home, test_image_layouts)
    settings = {"database_url": postgres_cluster.create_database("slurm"), "slurm": "true",
                "slurm_partition": slurm_cluster.partition, "slurm_time_limit": "00:10:00",
                "slurm_max_jobs": 2, "slurm_messages_per_job": 2, "slurm_cpus_per_job": 1,
                "slurm_poll_s": 1, "slurm_idle_s": 4, "drain_grace_s": 5}
    server = LiveServer(home=home, port=free_port(), settings=settings)
    server.start()
    try:
        assert slurm_cluster.squeue() == [], "no pilot before anything is queued"
        actor = server.register("abacosamples/test", wait_ready=False)
        time.sleep(3)
        assert slurm_cluster.squeue() == [], "an actor alone queues nothing: still no pilot"
        ids = [server.send(actor["id"], f"pilot message {i}") for i in range(4)]
        jobs = _wait(lambda: [j for j in slurm_cluster.squeue() if j["name"].startswith("lightabaco-")], 30,
                     "a pilot submission", server)
        assert 1 <= len(jobs) <= 2, jobs
        ran_in = set()
        for ex_id in ids:
            ex = server.wait_execution(actor["id"], ex_id, timeout=180)
            assert ex["status"] == "COMPLETE"
            assert "Contents of MSG: pilot message" in server.logs(actor["id"], ex_id)
            # the execution's record says where it ran: the node and the Slurm job
            where = re.fullmatch(r"localhost \(Slurm job (\d+)\)", ex.get("host") or "")
            assert where, ex
            ran_in.add(where.group(1))
        # the pilot said where it ran (node and job id), and got the image from the API, not a registry
        logs = {p.name: p.read_text(errors="replace") for p in (home / "slurm").glob("pilot-*.log")}
        assert logs, "pilot logs are written to slurm_dir"
        seen = {m.group(1) for text in logs.values()
                for m in re.finditer(r"node=localhost slurm_job_id=(\d+)", text)}
        assert seen and seen <= {p[len("pilot-"):-len(".log")] for p in logs}, logs
        assert ran_in and ran_in <= seen, (ran_in, seen)
        assert any("pulled abacosamples/test from the API server" in t for t in logs.values()), logs
        # idle: every pilot is cancelled (min_jobs 0)
        _wait(lambda: not [j for j in slurm_cluster.squeue() if j["name"].startswith("lightabaco-")], 60,
              "cancellation of the idle pilots", server)
        assert "cancelled idle pilot(s)" in server.log_tail(200)
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
