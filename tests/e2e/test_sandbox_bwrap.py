"""The bwrap backend end to end: real bubblewrap, real rootfs trees, real processes."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from lightabaco.sandbox.types import MAX_RESULT_BYTES, ExecSpec, Limits
from tests.fixtures.sandbox import prepared, python_mounts

pytestmark = pytest.mark.e2e


def log_text(result) -> str:  # type: ignore[no-untyped-def]
    return Path(result.log_path).read_text(errors="replace")


def py(image, code: str, make_spec, **kwargs) -> ExecSpec:  # type: ignore[no-untyped-def]
    mounts = python_mounts() + kwargs.pop("mounts", [])
    return make_spec(image, "/usr/bin/python3", "-c", code, mounts=mounts, **kwargs)


def test_env_msg_exit_code_and_logs_in_order(bwrap_backend, busybox_rootfs, make_spec):
    image = prepared(busybox_rootfs, env=["PATH=/bin", "FROM_IMAGE=img", "DROP_ME=x", "OVER=image"])
    script = ("echo out1; echo err1 >&2; echo \"MSG=$MSG\"; echo \"FROM_IMAGE=$FROM_IMAGE\"; "
              "echo \"OVER=$OVER\"; echo \"DROP=${DROP_ME-unset}\"; echo \"CT=$(tr '\\0' '\\n' < /proc/1/environ | grep Content-Type)\"; "
              "echo \"HOST=$(hostname)\"; echo \"PWD=$(pwd)\"; echo out2; exit 42")
    spec = make_spec(image, "/bin/sh", "-c", script, execution_id="envtest1",
                     env={"MSG": "{'a': 1}", "OVER": "message", "DROP_ME": None,
                          "_abaco_Content-Type": "str"})
    res = bwrap_backend.run(spec)
    assert res.exit_code == 42 and res.signal is None and res.failure is None
    assert res.reason == "exited with status 42"
    text = log_text(res)
    assert text.splitlines()[:2] == ["out1", "err1"]
    for line in ("MSG={'a': 1}", "FROM_IMAGE=img", "OVER=message", "DROP=unset",
                 "CT=_abaco_Content-Type=str", "HOST=envtest1", "PWD=/"):
        assert line in text
    assert text.rstrip().endswith("out2")
    assert res.wall_s > 0 and res.end_time >= res.start_time and res.stats_source == "wait4"


def test_binary_message_10mb_both_reader_styles(bwrap_backend, py_image, make_spec):
    payload = os.urandom(10 * 1024 * 1024)
    code = r"""
import hashlib, os
with open('/_abaco_binary_data', 'rb') as f:
    a = f.read()
fd = os.open('/_abaco_binary_data', os.O_RDONLY | os.O_NONBLOCK)
chunks = []
while True:
    try:
        c = os.read(fd, 4069)
    except BlockingIOError:
        break
    if not c:
        break
    chunks.append(c)
b = b''.join(chunks)
print('blocking', len(a), hashlib.sha256(a).hexdigest())
print('nonblocking', len(b), hashlib.sha256(b).hexdigest())
"""
    res = bwrap_backend.run(py(py_image, code, make_spec, binary_message=payload))
    digest = hashlib.sha256(payload).hexdigest()
    text = log_text(res)
    assert res.exit_code == 0, text
    assert f"blocking {len(payload)} {digest}" in text
    assert f"nonblocking {len(payload)} {digest}" in text


def test_no_binary_message_reads_empty(bwrap_backend, bb_image, make_spec):
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "wc -c < /_abaco_binary_data"))
    assert res.exit_code == 0 and log_text(res).strip() == "0"


def test_results_in_order_oversize_rejected_and_delivered_while_running(
        bwrap_backend, py_image, make_spec, sandbox_dir):
    flag_dir = sandbox_dir / "flags"
    flag_dir.mkdir()
    flag_dir.chmod(0o777)  # the sandbox may run as another host uid
    code = r"""
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.connect('/_abaco_results.sock')
s.send(b'first')
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
s.send(b'x' * (131072 + 1))
s.send(b'y' * 131072)
for i in range(30):
    s.send(b'r%d' % i)
# Exit only once the host has seen the results (it creates the flag from on_result).
deadline = time.time() + 15
while not os.path.exists('/flags/seen') and time.time() < deadline:
    time.sleep(0.01)
print('flag', os.path.exists('/flags/seen'))
"""
    seen_running: list[bool] = []
    holder: dict[str, object] = {}

    got: list[bytes] = []

    def on_result(data: bytes) -> None:
        got.append(data)
        if data == b"r29":
            seen_running.append(holder["ex"].poll() is None)  # type: ignore[attr-defined]
            (flag_dir / "seen").touch()

    spec = py(py_image, code, make_spec, on_result=on_result, mounts=[(flag_dir, "/flags", False)])
    ex = bwrap_backend.start(spec)
    holder["ex"] = ex
    res = ex.wait(30)
    assert res is not None and res.exit_code == 0, log_text(res)
    assert "flag True" in log_text(res)
    assert seen_running == [True]
    assert got[0] == b"first"
    assert got[1] == b"y" * MAX_RESULT_BYTES
    assert got[2:] == [b"r%d" % i for i in range(30)]
    assert res.results == []  # all went to the callback
    assert res.results_rejected == 1


def test_log_cap_and_marker_while_flooding(bwrap_backend, bb_image, make_spec):
    spec = make_spec(bb_image, "/bin/sh", "-c", "echo start; yes 0123456789 | head -c 50000000; echo end",
                     limits=Limits(wall_timeout_s=30, log_bytes=10000))
    res = bwrap_backend.run(spec)
    data = Path(res.log_path).read_bytes()
    assert res.exit_code == 0 and res.log_truncated
    assert data.startswith(b"start\n0123456789")
    assert b"LOG LIMIT EXCEEDED" in data and data.rstrip().endswith(b"(kept the first 10000 bytes)")
    assert len(data) < 10000 + 200


def test_signal_exit_and_exec_failure(bwrap_backend, bb_image, make_spec):
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "sh -c 'kill -SEGV $$'; exit $?"))
    assert (res.exit_code, res.signal) == (139, 11) and "SIGSEGV" in res.reason
    res = bwrap_backend.run(make_spec(bb_image, "/no/such/program"))
    assert res.failure == "exec" and res.exit_code == 127
    assert "/no/such/program" in res.reason and "Entrypoint" in res.reason


def test_setup_failure_is_reported_with_bwraps_words(bwrap_backend, bb_image, make_spec, sandbox_dir):
    # /etc exists read-only in the image, so bwrap cannot create a mount point below it.
    spec = make_spec(bb_image, "/bin/true", mounts=[(sandbox_dir, "/etc/deeper/mnt", True)])
    res = bwrap_backend.run(spec)
    assert res.failure == "setup" and res.exit_code is None
    assert "bwrap:" in res.reason and "lightabaco doctor" in res.reason


def _sandbox_sleepers(tag: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        if tag in " ".join(p.info["cmdline"] or []):
            found.append(p.pid)
    return found


def test_timeout_kills_the_whole_tree(bwrap_backend, bb_image, make_spec):
    script = ("sleep 1001 & sleep 1002 & (sleep 1003 &) ; (trap '' TERM HUP; exec sleep 1004) & "
              "sleep 1005")
    t0 = time.monotonic()
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", script, timeout=1.0))
    assert time.monotonic() - t0 < 5
    assert res.timed_out and not res.killed and res.exit_code == 137 and res.signal == 9
    assert res.reason == "killed after 1 s wall-clock limit"
    assert res.stats_source == "wait4+snapshot"
    assert [p for t in ("sleep 1001", "sleep 1003", "sleep 1004", "sleep 1005")
            for p in _sandbox_sleepers(t)] == []


def test_kill_while_running(bwrap_backend, bb_image, make_spec):
    ex = bwrap_backend.start(make_spec(bb_image, "/bin/sh", "-c", "echo started; sleep 1006"))
    assert ex.wait(0.3) is None and ex.poll() is None
    ex.kill()
    res = ex.wait(10)
    assert res is not None and res.killed and not res.timed_out and res.exit_code == 137
    assert "force-quit" in res.reason
    assert _sandbox_sleepers("sleep 1006") == []
    ex.kill()  # a second kill after the end is harmless


def test_kill_with_grace_lets_a_handler_run(bwrap_backend, bb_image, make_spec):
    script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
    ex = bwrap_backend.start(make_spec(bb_image, "/bin/sh", "-c", script))
    time.sleep(0.3)
    ex.kill(grace_s=5)
    res = ex.wait(10)
    assert res is not None and res.killed and res.exit_code == 7 and "got-term" in log_text(res)


def test_endless_loop_timeout_reports_cpu(bwrap_backend, bb_image, make_spec):
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "while :; do :; done", timeout=1.0))
    assert res.timed_out and res.cpu_ns > 0.3e9


def test_cpu_limit_ends_a_busy_loop_with_a_clear_reason(bwrap_backend, bb_image, make_spec):
    spec = make_spec(bb_image, "/bin/sh", "-c", "while :; do :; done",
                     limits=Limits(wall_timeout_s=20, cpu_seconds=1))
    res = bwrap_backend.run(spec)
    assert not res.timed_out and res.signal == 9
    assert res.reason == "killed after using its 1 s cpu-time limit", (res.cpu_ns, res.stats_source)
    assert 0.75e9 <= res.cpu_ns < 1.8e9


def test_fork_bomb_is_stopped_and_host_stays_responsive(bwrap_backend, bb_image, make_spec):
    bomb = "f() { f | f & }; f; sleep 30"
    spec = make_spec(bb_image, "/bin/sh", "-c", bomb, limits=Limits(wall_timeout_s=20, pids=64))
    ex = bwrap_backend.start(spec)
    t0 = time.monotonic()
    probe_times = []
    while ex.poll() is None and time.monotonic() - t0 < 20:
        s = time.monotonic()
        os.stat("/")  # the host keeps answering
        probe_times.append(time.monotonic() - s)
        time.sleep(0.02)
    res = ex.wait(20)
    assert res is not None and not res.timed_out
    assert "limit of 64 processes" in res.reason
    assert max(probe_times) < 1.0
    import psutil

    assert not [p for p in psutil.process_iter(["ppid"]) if p.info["ppid"] == ex.child_pid]


def test_memory_hog_ends_with_clear_reason(bwrap_backend, py_image, make_spec):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n"
    spec = py(py_image, code, make_spec, limits=Limits(wall_timeout_s=20, memory_bytes=96 << 20))
    res = bwrap_backend.run(spec)
    # Either the allocation fails under RLIMIT_DATA (MemoryError, exit 1) or, when the code pages
    # push the resident size over the limit first, the watchdog stops it: both say "memory".
    assert not res.timed_out and res.exit_code in (1, 137), res.reason
    assert ("running out of memory" in res.reason or "of memory, over the" in res.reason), res.reason
    assert "96 MiB" in res.reason


def test_memory_of_many_processes_is_watched(bwrap_backend, py_image, make_spec):
    # Each process stays under the per-process RLIMIT_DATA; together they go over: the watchdog.
    code = ("import os, time\nfor i in range(6):\n    if os.fork() == 0:\n"
            "        b = bytearray(40 << 20)\n        time.sleep(30)\n        os._exit(0)\ntime.sleep(30)\n")
    spec = py(py_image, code, make_spec, limits=Limits(wall_timeout_s=20, memory_bytes=100 << 20))
    res = bwrap_backend.run(spec)
    assert not res.timed_out and "over the 100 MiB limit" in res.reason


def test_isolation_host_files_processes_store_and_network(bwrap_backend, bb_image, make_spec,
                                                          sandbox_dir, busybox_rootfs):
    secret = sandbox_dir / "host-secret.txt"
    secret.write_text("TOPSECRET")
    secret.chmod(0o644)
    script = (f"cat {secret} /etc/shadow 2>&1; echo procs=$(ls -d /proc/[0-9]* | wc -l); "
              "touch /bin/evil 2>&1; touch /evil 2>&1; echo tmp > /tmp/ok && cat /tmp/ok; "
              "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; "
              "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; id -u")
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", script))
    text = log_text(res)
    assert "TOPSECRET" not in text and "No such file" in text
    procs = int(text.split("procs=")[1].split()[0])
    assert procs <= 4  # the shell and its pipeline, nothing of the host
    assert text.count("Read-only file system") == 2 and "\ntmp\n" in text
    assert not (busybox_rootfs / "bin" / "evil").exists() and not (busybox_rootfs / "evil").exists()
    assert "\nlo\n" in text and "eth" not in text
    assert "CapEff:\t0000000000000000" in text and "NoNewPrivs:\t1" in text
    assert text.strip().endswith("1000")


def test_actor_is_never_host_root(bwrap_backend, bb_image, make_spec):
    ex = bwrap_backend.start(make_spec(bb_image, "/bin/sleep", "5", uid_gid=(0, 0)))
    deadline = time.monotonic() + 5
    while ex.child_pid is None and time.monotonic() < deadline:
        time.sleep(0.01)
    status = Path(f"/proc/{ex.child_pid}/status").read_text()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    ex.kill()
    ex.wait(10)
    assert "0" not in uids
    if os.geteuid() != 0:
        assert uids[0] == str(os.getuid())


def test_image_user_and_explicit_uid(bwrap_backend, busybox_rootfs, make_spec):
    for user, expect in (("svc", "2000:2001"), ("svc:staff", "2000:3000"), ("1234:55", "1234:55"),
                         ("", "0:0")):
        image = prepared(busybox_rootfs, user=user)
        res = bwrap_backend.run(make_spec(image, "/bin/sh", "-c", 'echo "$(id -u):$(id -g) $HOME"',
                                          use_image_user=True))
        assert log_text(res).split()[0] == expect, (user, log_text(res))
    res = bwrap_backend.run(make_spec(prepared(busybox_rootfs), "/bin/sh", "-c", "id -u; echo $HOME"))
    assert log_text(res).split() == ["1000", "/home/app"]
    res = bwrap_backend.run(make_spec(prepared(busybox_rootfs), "/bin/id", "-u", uid_gid=(4321, 4321)))
    assert log_text(res).strip() == "4321"


def test_stats_cpu_of_a_half_second_busy_loop(bwrap_backend, py_image, make_spec):
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"
    res = bwrap_backend.run(py(py_image, code, make_spec))
    assert res.exit_code == 0
    assert 0.45e9 <= res.cpu_ns <= 1.2e9
    assert res.max_rss_kb > 0 and res.io["rchar"] > 0


def test_io_counts_bytes_written(bwrap_backend, bb_image, make_spec):
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c",
                                      "dd if=/dev/zero of=/tmp/f bs=1M count=8 2>/dev/null"))
    assert res.exit_code == 0 and res.io["wchar"] >= 8 << 20 and res.io_bytes >= 8 << 20


def test_scratch_removed_and_stale_scratch_collected(bwrap_backend, bb_image, make_spec, sandbox_dir):
    from lightabaco.sandbox.bwrap import BwrapBackend

    ex = bwrap_backend.start(make_spec(bb_image, "/bin/sleep", "0.3", execution_id="gone1"))
    assert (bwrap_backend.scratch.run_root / "gone1" / "results.sock").is_socket()
    res = ex.wait(20)
    assert res.exit_code == 0 and not (bwrap_backend.scratch.run_root / "gone1").exists()
    stale = bwrap_backend.scratch.run_root / "crashed1"
    stale.mkdir()
    (stale / "binary_data").write_bytes(b"x")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    live = bwrap_backend.scratch.create("alive1")  # held by this process: must survive
    os.utime(live.path, (time.time() - 3600, time.time() - 3600))
    again = BwrapBackend(bwrap_backend.scratch.root)
    assert again.stale_collected == ["crashed1"]
    assert not stale.exists() and live.path.exists()
    live.remove()


def test_image_without_mount_points_uses_a_tmpfs_root(bwrap_backend, sandbox_dir, make_spec):
    from tests.fixtures.sandbox import make_busybox_rootfs

    rootfs = make_busybox_rootfs(sandbox_dir / "bare", mount_points=False)
    image = prepared(rootfs, working_dir="/work")
    res = bwrap_backend.run(make_spec(image, "/bin/sh", "-c",
                                      "pwd; ls / | tr '\\n' ' '; touch /x 2>&1; cat /_abaco_binary_data",
                                      binary_message=b"bin!"))
    text = log_text(res)
    assert res.exit_code == 0, text
    assert text.startswith("/work\n") and "Read-only file system" in text and "bin!" in text
    assert not (rootfs / "proc").exists()


def test_concurrent_executions(bwrap_backend, bb_image, make_spec):
    results = []

    def one(i: int) -> None:
        results.append(bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", f"echo n{i}; exit {i}")))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r.exit_code for r in results) == list(range(8))
    for r in results:
        assert log_text(r).strip() == f"n{r.exit_code}"


def test_seccomp_denies_the_listed_calls_with_eperm(bwrap_backend, py_image, make_spec):
    from lightabaco.sandbox import seccomp

    if not seccomp.supported():
        pytest.skip("the seccomp deny-list is x86-64 only")
    code = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name, nr in (('ptrace', 101), ('keyctl', 250), ('bpf', 321), ('getpid', 39)):
    rc = libc.syscall(nr, 0, 0, 0, 0)
    print(name, rc, ctypes.get_errno())
print([l for l in open('/proc/self/status') if l.startswith('Seccomp:')][0].strip())
"""
    res = bwrap_backend.run(py(py_image, code, make_spec))
    text = log_text(res)
    assert res.exit_code == 0, text
    for name in ("ptrace", "keyctl", "bpf"):
        assert f"{name} -1 1\n" in text  # EPERM
    assert "getpid -1" not in text and "Seccomp:\t2" in text


def test_binary_message_above_the_inline_size_goes_through_a_file(bwrap_backend, bb_image, make_spec,
                                                                  monkeypatch):
    import lightabaco.sandbox.bwrap as bwrap_mod

    monkeypatch.setattr(bwrap_mod, "INLINE_BINARY_MAX", 1000)
    payload = b"0123456789" * 500
    ex = bwrap_backend.start(make_spec(bb_image, "/bin/sh", "-c", "cat /_abaco_binary_data; sleep 0.2",
                                       binary_message=payload))
    deadline = time.monotonic() + 10
    while ex.child_pid is None and time.monotonic() < deadline:
        time.sleep(0.01)
    big = bwrap_backend.scratch.root / f"{ex.id}.binary-data"
    assert big.read_bytes() == payload
    res = ex.wait(20)
    assert Path(res.log_path).read_bytes() == payload
    assert not big.exists() and not (bwrap_backend.scratch.run_root / ex.id).exists()


def test_max_rss_reflects_the_actor_not_the_runtime(bwrap_backend, py_image, make_spec):
    code = "import time\nb = bytearray(80 << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\ntime.sleep(0.3)\n"
    res = bwrap_backend.run(py(py_image, code, make_spec))
    assert res.exit_code == 0
    assert 80 * 1024 <= res.max_rss_kb < 200 * 1024


def test_network_host_shares_the_host_network(bwrap_backend, bb_image, make_spec):
    script = "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '"
    isolated = log_text(bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", script)))
    shared = log_text(bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", script, network="host")))
    assert isolated.split() == ["lo"]
    host_ifaces = sorted(line.split(":")[0].strip()
                         for line in Path("/proc/net/dev").read_text().splitlines()[2:])
    assert shared.split() == host_ifaces


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs sandboxes as another host user")
def test_root_explains_an_unreachable_rootfs(bwrap_backend, sandbox_dir, make_spec):
    from lightabaco.sandbox.errors import ExecutionSetupError
    from tests.fixtures.sandbox import make_busybox_rootfs

    private = sandbox_dir / "private"
    private.mkdir(mode=0o700)
    rootfs = make_busybox_rootfs(private / "rootfs")
    private.chmod(0o700)
    with pytest.raises(ExecutionSetupError, match=r"cannot reach .*`chmod o\+x .*private`"):
        bwrap_backend.start(make_spec(prepared(rootfs), "/bin/true"))
    assert [p.name for p in bwrap_backend.scratch.root.iterdir()] == ["logs"]
    assert list(bwrap_backend.scratch.run_root.iterdir()) in ([], [bwrap_backend.scratch.root / "logs"])


def test_rlimits_are_in_force_inside(bwrap_backend, bb_image, make_spec):
    limits = Limits(wall_timeout_s=20, nofile=77, cpu_seconds=9, memory_bytes=300 << 20,
                    max_file_bytes=5 << 20, pids=40)
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "cat /proc/self/limits",
                                      limits=limits))
    rows = {line[:26].strip(): line[26:].split()[:2] for line in log_text(res).splitlines()[1:]}
    assert rows["Max open files"] == ["77", "77"]
    assert rows["Max cpu time"] == ["9", "9"]
    assert rows["Max data size"] == [str(300 << 20)] * 2
    assert rows["Max file size"] == [str(5 << 20)] * 2
    assert rows["Max processes"] == ["56", "56"]  # bwrap.nproc_limit(40)
    assert rows["Max core file size"] == ["0", "0"]


def test_works_when_the_host_process_has_many_open_files(bwrap_backend, bb_image, make_spec):
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1300:
        pytest.skip("needs RLIMIT_NOFILE >= 1300")
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]  # push new fds above 1023
    try:
        res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "echo many; exit 4",
                                          binary_message=b"x"))
    finally:
        for fd in held:
            os.close(fd)
    assert res.exit_code == 4 and log_text(res) == "many\n"


def test_an_endless_log_flood_still_times_out(bwrap_backend, bb_image, make_spec):
    t0 = time.monotonic()
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", "yes flooding-the-log",
                                      limits=Limits(wall_timeout_s=1.0, log_bytes=100_000)))
    assert time.monotonic() - t0 < 5
    assert res.timed_out and res.log_truncated
    assert Path(res.log_path).stat().st_size < 100_000 + 200


def test_tmp_is_size_capped_and_file_size_limited(bwrap_backend, bb_image, make_spec):
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c",
                                      "dd if=/dev/zero of=/tmp/big bs=1024 count=3000 2>&1",
                                      limits=Limits(wall_timeout_s=20, tmpfs_bytes=2 << 20)))
    assert "No space left on device" in log_text(res)
    script = "sh -c 'dd if=/dev/zero of=/tmp/f2 bs=1024 count=600 2>/dev/null'; echo fsize=$?"
    res = bwrap_backend.run(make_spec(bb_image, "/bin/sh", "-c", script,
                                      limits=Limits(wall_timeout_s=20, max_file_bytes=512 << 10)))
    assert "fsize=153" in log_text(res)  # 128 + SIGXFSZ: the file size limit ended the writer


def test_a_missing_mount_source_is_a_setup_error_before_anything_starts(bwrap_backend, bb_image,
                                                                      make_spec, sandbox_dir):
    from lightabaco.sandbox.errors import ExecutionSetupError

    with pytest.raises(ExecutionSetupError, match="does not exist"):
        bwrap_backend.start(make_spec(bb_image, "/bin/true",
                                      mounts=[(sandbox_dir / "nope", "/data", True)]))
    assert [p.name for p in bwrap_backend.scratch.root.iterdir()] == ["logs"]
    assert list(bwrap_backend.scratch.run_root.iterdir()) in ([], [bwrap_backend.scratch.root / "logs"])
