"""The quality bar, proven through the live server over HTTP, as a user meets it.

1. An actor cannot read the host's files (the server's token, /etc/shadow, the test's own directory).
2. An actor cannot see another execution: not its processes, not its /tmp, not its record over HTTP.
3. A fork bomb, a memory hog, a log flood and an endless loop each end COMPLETE within a bounded time
   with the reason visible to the user, while the server keeps answering and other actors keep running.
4. SIGKILL the whole server at a seeded random moment (3 kill points; plus a graceful SIGTERM stop),
   restart it: every message that was accepted (200 + execution id) ends COMPLETE, and no worker
   or sandbox of the killed server outlives it.

Every hostile actor is the same busybox image running its message as a shell script, so each test
says in one line what the actor does.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.fixtures.oci import busybox_layout
from tests.fixtures.processes import describe_processes, processes_mentioning
from tests.fixtures.server import LiveServer, MessageBurst, free_port, import_test_images, make_home

pytestmark = pytest.mark.e2e

SH_IMAGE = "qualitybar/sh"  # runs its message: `eval "$MSG"`
SH_SCRIPT = '#!/bin/sh\neval "$MSG"\n'
LOG_CAP = 200_000  # the server's max_log_bytes here: small, so the flood test reads little
TRUNCATION_MARKER = "LOG LIMIT EXCEEDED; this execution log was TRUNCATED!"
PLATFORM_LINE = "[lightabaco] "  # how the service marks a line it appended to an actor's log


def import_sh_image(home: Path, cache_dir: Path) -> None:
    from lightabaco.images import ImageStore

    layout = cache_dir / "qualitybar-sh"
    if not layout.exists():
        busybox_layout(layout, script=SH_SCRIPT)
    ImageStore(home / "images").import_path(layout, tag=SH_IMAGE)


@pytest.fixture(scope="module")
def qb_server(test_image_layouts: Path) -> Iterator[LiveServer]:
    """A server with room for every concurrent actor of this module and a small log cap."""
    home = make_home("lab-qb-")
    import_test_images(home, test_image_layouts)
    import_sh_image(home, test_image_layouts)
    server = LiveServer(home=home, port=free_port(),
                        settings={"workers": 8, "max_log_bytes": LOG_CAP, "sync_timeout_s": 10})
    server.start()
    yield server
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


def run_script(server: LiveServer, actor_id: str, script: str, timeout: float = 30.0,
               **request: Any) -> tuple[dict, str]:
    eid = server.send(actor_id, script, **request)
    ex = server.wait_execution(actor_id, eid, ("COMPLETE", "ERROR"), timeout=timeout)
    return ex, server.logs(actor_id, eid)


# ---------------------------------------------------------------------------------------------------
# 1. Host files


def test_actor_cannot_read_host_files(qb_server: LiveServer, tmp_path: Path) -> None:
    server = qb_server
    token = server.token
    assert len(token) > 20
    planted = tmp_path / "planted-secret-file.txt"
    planted_text = f"planted-{random.Random(1).getrandbits(64):x}"
    planted.write_text(planted_text)
    unlisted = tmp_path / f"unlisted-{random.Random(2).getrandbits(64):x}"  # named nowhere in the script
    unlisted.write_text("x")
    # Only root can read /etc/shadow: as an ordinary user (whose actors cannot read it either, see the
    # script's `cat /etc/shadow`), there are no hashes to look for.
    shadow_hashes = [line.split(":")[1] for line in Path("/etc/shadow").read_text().splitlines()
                     if len(line.split(":")) > 2 and len(line.split(":")[1]) > 3] \
        if os.access("/etc/shadow", os.R_OK) else []
    # network none: this test is about leaks; the API door of the default `api` mode (which answers
    # 401 without the actor's own token) is tested in test_network_modes.py.
    aid = server.register(SH_IMAGE, network="none")["id"]
    script = "; ".join([
        "echo begin", "id", "cat /etc/shadow", f"cat {server.home}/token", f"ls -la {server.home}",
        "ls -la /root", f"ls -la {tmp_path}", f"cat {planted}", "cat /proc/1/environ | tr '\\0' '\\n'",
        f"find / -name token -path '*{server.home.name}*' 2>/dev/null", "ls /proc/1/root/",
        "cat /etc/passwd",
        # The server's API is on the host's loopback: the sandbox has its own network namespace.
        f"printf 'GET /actors HTTP/1.0\\r\\n\\r\\n' | nc -w 2 127.0.0.1 {server.port}",
        "echo nc-exit=$?", "echo the-end",
    ])
    ex, logs = run_script(server, aid, script)
    assert ex["status"] == "COMPLETE", ex
    assert "begin" in logs and "the-end" in logs, logs  # the script did run all the way
    assert token not in logs
    assert token[:16] not in logs
    assert planted_text not in logs and unlisted.name not in logs
    for h in shadow_hashes:
        assert h not in logs
    # The sandbox's /etc/passwd is the image's (3 users), not the host's.
    assert "nobody:x:65534" in logs and "lightabaco-sbx" not in logs
    assert "nc-exit=1" in logs and "HTTP/1.1" not in logs
    # Nothing of the server's own environment reaches the actor (its /proc/1/environ was printed).
    assert "HOSTNAME=" in logs and "PYTHONPATH" not in logs and "LIGHTABACO" not in logs
    server.delete(f"/actors/{aid}")


@pytest.mark.parametrize("backend", ["bwrap", "podman"])
def test_actor_writes_are_bounded_and_stdio_works(qb_server: LiveServer, server_factory: Any,
                                                   test_image_layouts: Path, backend: str) -> None:
    """The only writable places are size-capped tmpfs mounts: a memory hog cannot park gigabytes in
    files (tmpfs pages count in no process's memory, so no rlimit or watchdog would see them)."""
    if backend == "bwrap":
        server = qb_server
    else:
        from lightabaco.sandbox.podman import PodmanBackend, short_run_dir

        probe_dir = Path(tempfile.mkdtemp(prefix="qb-podman-probe-"))
        report = PodmanBackend(probe_dir).probe()
        shutil.rmtree(short_run_dir(probe_dir), ignore_errors=True)
        shutil.rmtree(probe_dir, ignore_errors=True)
        if not report.usable:
            pytest.skip("podman is not usable here: " + "; ".join(report.reasons))
        server = server_factory(backend="podman", workers=2)
        import_sh_image(server.home, test_image_layouts)
    aid = server.register(SH_IMAGE)["id"]
    script = "; ".join([
        "dd if=/dev/zero of=/dev/shm/fill bs=1M count=300 2>/dev/null",
        "dd if=/dev/zero of=/tmp/fill bs=1M count=600 2>/dev/null",
        "for d in /dev /run /var/tmp; do dd if=/dev/zero of=$d/fill bs=1M count=100 2>/dev/null; done",
        "echo sizes: $(du -sk /dev/shm | cut -f1) $(du -sk /tmp | cut -f1) "
        "$(du -skx /dev /run /var/tmp 2>/dev/null | awk '{s+=$1} END {print s+0}')",
        "for d in / /dev /etc /app /home/app /root /proc/sys /_abaco_binary_data /run /var/tmp; do "
        "touch $d/qb-probe 2>/dev/null && echo writable:$d; done",
        # Scripts write to /dev/stderr and tee to /dev/stdout: the log pipe must reopen.
        "echo via-dev-stderr > /dev/stderr", "echo via-tee | tee /dev/stderr > /dev/null",
        "echo the-end",
    ])
    ex, logs = run_script(server, aid, script)
    assert ex["status"] == "COMPLETE" and "the-end" in logs, logs
    sizes_line = next(line for line in logs.splitlines() if line.startswith("sizes:"))
    shm_kib, tmp_kib, others_kib = (int(x) for x in sizes_line.split()[1:])
    assert shm_kib <= 64 * 1024 and tmp_kib <= 256 * 1024, sizes_line
    assert others_kib <= 64, sizes_line  # nothing was written to /dev, /run or /var/tmp
    assert "writable:" not in logs, logs
    assert "via-dev-stderr" in logs and "via-tee" in logs, logs
    server.delete(f"/actors/{aid}")


# ---------------------------------------------------------------------------------------------------
# 2. Other executions


def add_user(server: LiveServer, name: str) -> dict[str, str]:
    r = server.post("/actors/admin/users", json={"username": name, "role": "user"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['result']['token']}"}


def test_actor_cannot_see_another_execution(qb_server: LiveServer) -> None:
    server = qb_server
    bob_h, alice_h = add_user(server, "qb-bob"), add_user(server, "qb-alice")

    def register(h: dict[str, str]) -> str:
        r = requests.post(server.url + "/actors", json={"image": SH_IMAGE}, headers=h, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["result"]["id"]

    bob_aid, alice_aid = register(bob_h), register(alice_h)
    for aid in (bob_aid, alice_aid):
        server.wait_actor(aid, "READY")
    # Bob writes a file to his /tmp, starts a long sleep and shows that his own ps sees it.
    # (15 s: on a loaded host Alice's execution may take several seconds to be claimed and run)
    # (ps only once the background sleep has exec'd: right after `&` it can still show as the shell)
    bob_script = ("echo bob-secret-contents > /tmp/bob-private-file; sleep 15 & "
                  "until ps | grep -q '[s]leep 15'; do :; done; echo started; ps; "
                  "wait; echo bob done")
    r = requests.post(f"{server.url}/actors/{bob_aid}/messages", data={"message": bob_script},
                      headers=bob_h, timeout=30)
    assert r.status_code == 200, r.text
    bob_eid = r.json()["result"]["execution_id"]
    deadline = time.monotonic() + 20
    while "started" not in (server.logs(bob_aid, bob_eid) or ""):
        assert time.monotonic() < deadline, "bob's execution did not start"
        time.sleep(0.05)
    # While Bob's sleep runs, Alice looks around.
    alice_script = ("echo alice-start; ps; ls /proc; ls -la /tmp; cat /tmp/* 2>/dev/null; "
                    "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done; "
                    "echo alice-end")
    r = requests.post(f"{server.url}/actors/{alice_aid}/messages", data={"message": alice_script},
                      headers=alice_h, timeout=30)
    assert r.status_code == 200, r.text
    alice_eid = r.json()["result"]["execution_id"]
    alice_ex = server.wait_execution(alice_aid, alice_eid, ("COMPLETE", "ERROR"))
    bob_status = server.get(f"/actors/{bob_aid}/executions/{bob_eid}").json()["result"]["status"]
    assert bob_status == "RUNNING", "Bob's execution must still run while Alice looks"
    alice_logs = server.logs(alice_aid, alice_eid)
    assert alice_ex["status"] == "COMPLETE" and "alice-end" in alice_logs, alice_logs
    assert "ps" in alice_logs  # her own ps shows itself: the listing works
    assert "sleep" not in alice_logs, alice_logs
    assert "bob-private-file" not in alice_logs and "bob-secret-contents" not in alice_logs
    # Alice's sandbox has only her own processes: pid 1 and a handful of children.
    pids = [line for line in alice_logs.splitlines() if line.strip().isdigit()]
    assert 1 <= len(pids) <= 8, alice_logs

    bob_ex = server.wait_execution(bob_aid, bob_eid, timeout=60)
    bob_logs = server.logs(bob_aid, bob_eid)
    assert bob_ex["status"] == "COMPLETE" and "bob done" in bob_logs
    assert "sleep 15" in bob_logs  # the same ps does see a sleep when it is in the same sandbox
    # Over HTTP, Alice cannot read Bob's execution, its logs or its actor.
    for path in (f"/actors/{bob_aid}", f"/actors/{bob_aid}/executions/{bob_eid}",
                 f"/actors/{bob_aid}/executions/{bob_eid}/logs"):
        r = requests.get(server.url + path, headers=alice_h, timeout=10)
        assert r.status_code in (400, 403, 404), (path, r.status_code, r.text)
        assert "bob-secret" not in r.text and "sleep" not in r.text
    for aid, h in ((bob_aid, bob_h), (alice_aid, alice_h)):
        requests.delete(f"{server.url}/actors/{aid}", headers=h, timeout=10)


# ---------------------------------------------------------------------------------------------------
# 3. Hostile actors: each ends, with a reason, and the server stays usable meanwhile

HOSTILE = {
    # name: (actor fields, script, words the user must see as the reason, bound on its run time)
    # Each copy forks forever; the classic `b | b &` can die out on its own when forks fail.
    "fork_bomb": ({"max_run_time": 30}, "b(){ while :; do b & done; }; b", ("processes",), 20.0),
    # One process doubling a shell string: stopped by the per-process limit (the actor's 64m) ...
    "memory_hog": ({"max_run_time": 30, "mem_limit": "64m"},
                   'a=x; while true; do a="$a$a"; done', ("memory",), 20.0),
    # ... or, with no mem_limit on the actor, by the instance default (2g).
    "memory_hog_default_limit": ({"max_run_time": 30}, 'a=x; while true; do a="$a$a"; done',
                                 ("memory", "2048 MiB"), 25.0),
    # Twelve processes of ~8-24 MiB each, every one under the per-process limit: the watchdog
    # adds up the whole tree.
    "memory_hog_many_processes": (
        {"max_run_time": 30, "mem_limit": "64m"},
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do "
        '(a=x; n=0; while [ $n -lt 23 ]; do a="$a$a"; n=$((n+1)); done; sleep 30) & done; wait',
        ("memory", "64 MiB limit"), 20.0),
    # Empty files cost no tmpfs bytes but ~1 KiB of kernel memory each, outside every process.
    "file_flood": ({"max_run_time": 30}, "i=0; while :; do : > /tmp/f$i; : > /dev/shm/g$i; i=$((i+1)); done",
                   ("files", "65536"), 20.0),
    "log_flood": ({"max_run_time": 3}, "yes", ("wall-clock",), 20.0),
    "endless_loop": ({"max_run_time": 3}, "while :; do :; done", ("wall-clock",), 20.0),
    # Eight spinning processes on a 2-core host: the API and other actors must still get CPU.
    "endless_loops_8_processes": ({"max_run_time": 3},
                                  "for i in 1 2 3 4 5 6 7 8; do (while :; do :; done) & done; wait",
                                  ("wall-clock",), 20.0),
}


@pytest.fixture(scope="module")
def good_actor(qb_server: LiveServer) -> str:
    return qb_server.register("abacosamples/test")["id"]


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_actor_ends_with_a_reason_while_the_server_serves(qb_server: LiveServer, good_actor: str,
                                                                   kind: str) -> None:
    server = qb_server
    fields, script, reason_words, bound = HOSTILE[kind]
    aid = server.register(SH_IMAGE, **fields)["id"]
    log_dir = server.home / "exec" / "logs"
    t0 = time.monotonic()
    eid = server.send(aid, script)
    api_latencies: list[float] = []
    live_log_sizes: list[int] = [0]
    saw_running = False
    good_eid: str | None = None
    good_done_while_running = False
    session = requests.Session()
    session.headers.update(server.headers())
    while True:
        t = time.monotonic()
        r = session.get(server.url + "/actors", timeout=10)
        api_latencies.append(time.monotonic() - t)
        assert r.status_code == 200, r.text
        ex = session.get(f"{server.url}/actors/{aid}/executions/{eid}", timeout=10).json()["result"]
        if ex["status"] in ("COMPLETE", "ERROR"):
            break
        if ex["status"] == "RUNNING":
            saw_running = True
            if good_eid is None:  # another actor's message, sent while the hostile one runs
                good_eid = server.send(good_actor, f"while {kind}")
            else:
                good = session.get(f"{server.url}/actors/{good_actor}/executions/{good_eid}",
                                   timeout=10).json()["result"]
                good_done_while_running |= good["status"] == "COMPLETE"
        live = log_dir / f"{eid}.log"
        try:
            live_log_sizes.append(live.stat().st_size)
        except OSError:
            pass
        assert time.monotonic() - t0 < bound, f"{kind} still {ex['status']} after {bound} s"
        time.sleep(0.1)
    elapsed = time.monotonic() - t0
    assert ex["status"] == "COMPLETE", ex

    # The reason is visible to the user: in final_state.Error and as the last line of the logs.
    logs = server.logs(aid, eid)
    error = ex["final_state"]["Error"]
    for word in reason_words:
        assert word in error, (kind, ex["final_state"])
    last_line = logs.rstrip("\n").splitlines()[-1]
    assert last_line.startswith(PLATFORM_LINE) and error in last_line, (kind, logs[-500:])
    assert ex["exit_code"] != 0, ex

    # The server kept answering, and another actor's message completed.
    assert max(api_latencies) < 1.0, (kind, max(api_latencies))
    if good_eid is None:  # it ended before we saw it RUNNING (the fork bomb is stopped in < 1 s)
        good_eid = server.send(good_actor, f"after {kind}")
    good = server.wait_execution(good_actor, good_eid, timeout=15)
    good_logs = server.logs(good_actor, good_eid)
    assert "Contents of MSG:" in good_logs and "PATH=" in good_logs  # `env` is a fork: forks work
    if "loop" in kind or kind == "log_flood":  # these are guaranteed to run for seconds
        assert saw_running and good_done_while_running, (kind, good)

    if kind == "log_flood":
        assert TRUNCATION_MARKER in logs
        assert len(logs.encode()) <= LOG_CAP + 200, len(logs.encode())
        # Disk: the live log file never grew past the cap (plus one pipe buffer of slack).
        assert max(live_log_sizes) <= LOG_CAP + 65536, max(live_log_sizes)
        assert len(live_log_sizes) > 3  # it was observed while running
    print(f"\n{kind}: ended after {elapsed:.2f} s ({error}); GET /actors max "
          f"{max(api_latencies) * 1e3:.0f} ms over {len(api_latencies)} calls")
    server.delete(f"/actors/{aid}")  # frees its worker within the server's global cap


def test_force_quit_of_a_loop_that_ignores_sigterm(qb_server: LiveServer) -> None:
    server = qb_server
    aid = server.register(SH_IMAGE, max_run_time=60)["id"]
    eid = server.send(aid, "trap '' TERM INT; echo trapped; while :; do :; done")
    deadline = time.monotonic() + 20
    while "trapped" not in server.logs(aid, eid):
        assert time.monotonic() < deadline, "the loop did not start"
        time.sleep(0.05)
    t0 = time.monotonic()
    r = server.delete(f"/actors/{aid}/executions/{eid}")
    assert r.status_code == 200, r.text
    ex = server.wait_execution(aid, eid, timeout=15)
    assert time.monotonic() - t0 < 10  # SIGTERM is ignored; the SIGKILL after the grace period is not
    assert ex["exit_code"] == 137 and "force-quit" in ex["final_state"]["Error"], ex
    assert server.logs(aid, eid).endswith(f"[lightabaco] {ex['final_state']['Error']}\n")
    server.delete(f"/actors/{aid}")


# ---------------------------------------------------------------------------------------------------
# 4. Kill the server at any moment: nothing accepted is lost

def epoch(iso: str) -> float:
    """An execution time as the API shows it ("2026-11-28T05:18:26.421Z") → epoch seconds."""
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


BURST = 40
EXEC_SLEEP = "0.2"  # each execution sleeps this long, so the burst takes ~4 s on 2 workers


@pytest.mark.parametrize("kill_point", ["before_any_finished", "mid_burst", "after_burst",
                                        "sigterm_after_burst"])
def test_server_killed_at_any_moment_loses_no_accepted_message(server_factory: Any, kill_point: str) -> None:
    rng = random.Random(f"quality-bar-{kill_point}")
    server = server_factory(workers=2)
    aid = server.register("lightabaco/sleep", max_workers=2)["id"]

    def params(i: int) -> dict[str, str]:
        # Before the first kill point the first messages run long, so that even on a loaded host no
        # execution can finish between the first acceptance and the kill.
        sleep = "1.5" if kill_point == "before_any_finished" and i < 6 else EXEC_SLEEP
        # After the burst the last messages must still be running at the kill: on a loaded host the
        # POSTs can be slow enough that 0.2 s executions all finish as they arrive.
        if kill_point.endswith("after_burst") and i >= BURST - 4:
            sleep = "3"
        return {"ITERATIONS": "1", "SLEEP": sleep}

    burst = MessageBurst(server, aid, BURST, threads=2, params=params).start()
    if kill_point == "before_any_finished":
        burst.wait_accepted(1, timeout=30)
        time.sleep(rng.uniform(0.0, 0.05))  # < one execution's sleep: none can have finished
    elif kill_point == "mid_burst":
        burst.wait_accepted(rng.randint(BURST // 4, 3 * BURST // 4), timeout=30)
    else:  # after the burst, while executions run: SIGKILL, or a graceful stop for comparison
        burst.join(timeout=30)
        time.sleep(rng.uniform(0.2, 1.0))
        # The orphan check below can see this server's processes and sandboxes while they run.
        # (polled: between two executions of a slot there is a moment with no sandbox at all)
        seen_until = time.monotonic() + 5
        while not processes_mentioning(f"_abaco_actor_id={aid}".encode()):
            assert time.monotonic() < seen_until, "no execution of the burst was running before the kill"
            time.sleep(0.02)
        assert len(processes_mentioning(str(server.home).encode())) >= 3  # server + 2 workers
    killed_at = time.time()
    if kill_point.startswith("sigterm"):
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=20)  # a graceful stop must not need SIGKILL
    else:
        server.kill()
    burst.join(timeout=30)
    # Nothing of the killed server lives on: no worker (its argv names the home), no sandbox (its
    # environment names the actor), so no orphan keeps running an execution outside the records.
    needles = (str(server.home).encode(), f"_abaco_actor_id={aid}".encode())
    deadline = time.monotonic() + 10
    while (left := processes_mentioning(*needles)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed server still run: {describe_processes(left)}"
    promised = burst.accepted
    assert promised, "nothing was accepted before the kill"
    if kill_point.endswith("after_burst"):
        assert len(promised) == BURST
    elif kill_point == "mid_burst":
        assert len(promised) < BURST, "the kill came after the burst: the kill point was missed"

    server.start()
    deadline = time.monotonic() + 90
    while True:
        summary = server.get(f"/actors/{aid}/executions").json()["result"]["executions"]
        by_id = {e["id"]: e for e in summary}
        pending = [e for e in promised if by_id.get(e, {}).get("status") not in ("COMPLETE", "ERROR")]
        # A POST whose answer died with the server may still have been committed: the client got no
        # promise, but its execution runs after the restart too, and must finish like the others.
        unanswered = [e["id"] for e in summary if e["id"] not in promised and
                      e["status"] in ("RUNNING", "SUBMITTED")]
        if not pending and not unanswered:
            break
        assert time.monotonic() < deadline, (f"{len(pending)} accepted executions never finished; "
                                             f"{len(unanswered)} unanswered ones still pending")
        time.sleep(0.25)
    assert [e for e in promised if e not in by_id] == []
    not_complete = {e: by_id[e]["status"] for e in promised if by_id[e]["status"] != "COMPLETE"}
    assert not not_complete, (kill_point, not_complete, server.log_tail())
    assert not [e for e in summary if e["status"] in ("RUNNING", "SUBMITTED")]
    finished = sorted(epoch(by_id[e]["finish_time"]) for e in promised)
    # The kill point is what the test name says: no execution had finished before it, or some
    # executions were still to finish after it.
    if kill_point == "before_any_finished":
        assert finished[0] > killed_at, (finished[0], killed_at)
    assert finished[-1] > killed_at
    for eid in promised[:: max(1, len(promised) // 5)]:
        ex = server.get(f"/actors/{aid}/executions/{eid}").json()["result"]
        assert ex["exit_code"] == 0 and "done" in server.logs(aid, eid), ex
    print(f"\n{kill_point}: {len(promised)} of {BURST} accepted before the kill, all COMPLETE after restart")
