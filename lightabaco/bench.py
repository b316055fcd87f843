"""Benchmark: the real server against the raw sandbox path, in one run, side by side.

    python -m lightabaco.bench [--messages 1000] [--samples 100] [--json]

It builds a trivial busybox actor (`echo ok`), measures the sandbox library on its own (latency of one
execution, executions per second with 2 threads), then starts `python -m lightabaco.server serve
--workers 2` on a free loopback port with a fresh home and measures, over HTTP:
- async message → COMPLETE latency (POST, then poll the execution every 2 ms),
- synchronous round trip (`?_abaco_synchronous=true`),
- enqueue rate (messages accepted per second, 4 keep-alive client threads): once for the API alone (an
  actor without workers) and once while the 2 workers execute the burst on the same 2 cores,
- sustained executions per second with 2 workers (while the mailbox is non-empty),
- RSS of the server and of its 2 idle workers.
Targets (2 cores, trivial actor): sync median <= 25 ms, throughput >= 70% of the sandbox rate,
enqueue >= 1000/s, RSS with 2 idle workers <= 150 MB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource  # imported now: the sandbox user may not be able to read the standard library
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TRIVIAL_TAG = "bench/trivial"


# -- helpers ---------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * (len(ordered) - 1)))))
    return ordered[k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_trivial_image(home: Path) -> None:
    """busybox with Cmd ["/bin/echo", "ok"], imported into the home's image store."""
    from lightabaco.build import bases
    from lightabaco.images import ImageStore
    from lightabaco.build.oci_write import LayoutWriter, read_layout

    base = bases.busybox_layout(home / "cache")
    _config, layers, _ = read_layout(base)
    dest = home / "cache" / "trivial"
    writer = LayoutWriter(dest)
    for layer in layers:
        writer.add_existing(layer)
    writer.finish({"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/echo", "ok"]},
                  ref="latest")
    ImageStore(home / "images").import_path(dest, tag=TRIVIAL_TAG)


class Client:
    """A keep-alive HTTP/1.1 client (http.client is lighter than requests: the client must not be
    the bottleneck on a 2-core machine)."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, body: bytes | None = None,
             content_type: str | None = None) -> tuple[int, bytes]:
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, form: dict[str, str] | None = None,
             payload: Any = None) -> Any:
        if payload is not None:
            status, data = self.call(method, path, json.dumps(payload).encode(), "application/json")
        elif form is not None:
            from urllib.parse import urlencode

            status, data = self.call(method, path, urlencode(form).encode(),
                                     "application/x-www-form-urlencoded")
        else:
            status, data = self.call(method, path)
        body = json.loads(data)
        if status != 200:
            raise RuntimeError(f"{method} {path} -> {status}: {body.get('message')}")
        return body["result"]


# -- the raw sandbox path ----------------------------------------------------------------------------


def bench_sandbox(home: Path, samples: int, seconds: float) -> dict[str, float]:
    from lightabaco.sandbox.backend import get_backend
    from lightabaco.images import ImageStore
    from lightabaco.sandbox.types import ExecSpec

    image = ImageStore(home / "images").ensure(TRIVIAL_TAG)
    backend = get_backend("auto", scratch=home / "raw-exec")
    lat = []
    for i in range(samples + 5):
        t0 = time.perf_counter()
        backend.start(ExecSpec(image=image, execution_id=f"raw{i}", env={"MSG": "x"})).wait()
        if i >= 5:
            lat.append((time.perf_counter() - t0) * 1000)
    done = [0]
    stop = time.monotonic() + seconds

    def loop(k: int) -> None:
        n = 0
        while time.monotonic() < stop:
            backend.start(ExecSpec(image=image, execution_id=f"t{k}-{n}", env={"MSG": "x"})).wait()
            n += 1
        done[0] += n

    t0 = time.monotonic()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = done[0] / (time.monotonic() - t0)
    return {"latency_median_ms": statistics.median(lat), "latency_p95_ms": pct(lat, 95),
            "exec_per_s_2": rate}


def raw_bwrap_argv(rootfs: Path) -> list[str]:
    """bubblewrap with lightabaco's namespaces on the image's own rootfs, running its Cmd, nothing else."""
    return ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--as-pid-1", "--cap-drop", "ALL", "--uid", "1000", "--gid", "1000",
            "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--", "/bin/echo", "ok"]


def _as_sandbox_user(fn, *args: Any) -> Any:  # type: ignore[no-untyped-def]
    """Run fn(*args) in a forked child that runs as the sandbox user when we are root (so the raw
    baseline is what that user's bwrap costs, spawned by vfork like an ordinary user's); its JSON
    result comes back through a pipe."""
    from lightabaco.sandbox.users import sandbox_host_user

    user = sandbox_host_user()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(r)
            if user is not None:
                os.setgroups([])
                os.setresgid(user.gid, user.gid, user.gid)
                os.setresuid(user.uid, user.uid, user.uid)
            data = json.dumps(fn(*args)).encode()
            while data:
                data = data[os.write(w, data):]
            status = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError("the raw bwrap baseline failed (see above)")
    return json.loads(b"".join(chunks))


def _raw_latency(rootfs: str, samples: int) -> list[float]:
    argv = raw_bwrap_argv(Path(rootfs))
    out = []
    for i in range(samples + 5):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        if i >= 5:
            out.append((time.perf_counter() - t0) * 1000)
    return out


def _raw_rate(rootfs: str, seconds: float, runners: int) -> float:
    """Executions per second of `runners` processes each running raw bwrap back to back."""
    argv = raw_bwrap_argv(Path(rootfs))
    r, w = os.pipe()
    stop = time.monotonic() + seconds
    kids = []
    for _ in range(runners):
        pid = os.fork()
        if pid == 0:
            n = 0
            try:
                while time.monotonic() < stop:
                    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
                    n += 1
                os.write(w, f"{n}\n".encode())
            finally:
                os._exit(0)
        kids.append(pid)
    os.close(w)
    t0 = time.monotonic()
    for pid in kids:
        os.waitpid(pid, 0)
    elapsed = time.monotonic() - t0
    total = sum(int(x) for x in os.read(r, 4096).split())
    os.close(r)
    return total / elapsed


def _raw_cpu(rootfs: str, runs: int) -> float:
    """CPU seconds per raw bwrap execution (its own, and the spawning by this process)."""
    argv = raw_bwrap_argv(Path(rootfs))

    def used() -> float:
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    c0 = used()
    for _ in range(runs):
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return (used() - c0) / runs


def bench_raw(home: Path, samples: int, seconds: float) -> dict[str, float]:
    from lightabaco.images import ImageStore

    rootfs = str(ImageStore(home / "images").ensure(TRIVIAL_TAG).rootfs)
    lat = _as_sandbox_user(_raw_latency, rootfs, samples)
    rate = _as_sandbox_user(_raw_rate, rootfs, seconds, 2)
    cpu = _as_sandbox_user(_raw_cpu, rootfs, max(samples, 50))
    return {"start_median_ms": statistics.median(lat), "start_p95_ms": pct(lat, 95), "exec_per_s_2": rate,
            "cpu_ms_per_exec": cpu * 1000}


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process, its descendants and every child they reaped (the
    sandboxes' runtimes included): what bounds throughput when other jobs share the cores."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


# -- the server --------------------------------------------------------------------------------------


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTABACO_")}
    argv = [sys.executable, "-m", "lightabaco.server", "serve", "--home", str(home), "--port", str(port),
            "--workers", "2", "--set", "log_level=warning", "--set", "autoscaling=false",
            # The per-sender queue cap stays on (its count is part of every enqueue) but high
            # enough for the bursts below.
            "--set", "max_queued_messages_per_user=1000000"]
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); see {home / 'server.log'}")
        try:
            token = (home / "token").read_text().strip()
            Client(port, token).json("GET", "/actors")
            return proc
        except (OSError, ValueError, RuntimeError):
            time.sleep(0.05)
    raise RuntimeError("server did not start within 30 s")


def rss_mb(pid: int) -> tuple[float, float, float, int]:
    """(server RSS, server + its processes RSS, the same as PSS, number of descendant processes), MB.

    Worker processes share pages with each other (the sandbox library forks helpers), so summing RSS
    counts shared pages several times; PSS divides each shared page among its sharers.
    """
    import psutil

    proc = psutil.Process(pid)
    kids = proc.children(recursive=True)
    everyone = [proc] + kids
    rss = sum(p.memory_info().rss for p in everyone)
    try:
        pss = sum(p.memory_full_info().pss for p in everyone)
    except (psutil.AccessDenied, AttributeError):
        pss = float("nan")
    return proc.memory_info().rss / 2**20, rss / 2**20, pss / 2**20, len(kids)


def wait_workers(client: Client, aid: str, n: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ws = client.json("GET", f"/actors/{aid}/workers")
        if len([w for w in ws if w["status"] == "READY"]) >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{n} workers did not become READY")


def burst(port: int, token: str, aid: str, messages: int, clients: int = 4) -> tuple[int, float]:
    """POST `messages` messages from `clients` keep-alive connections: (accepted, seconds). Raises
    when any was refused: a refused message is cheap and would inflate the rate."""
    counter = iter(range(messages))
    lock = threading.Lock()
    accepted = [0]
    refused: list[int] = []

    def sender() -> None:
        cl = Client(port, token)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            status, _ = cl.call("POST", f"/actors/{aid}/messages", b"message=x",
                                "application/x-www-form-urlencoded")
            if status == 200:
                with lock:
                    accepted[0] += 1
            else:
                refused.append(status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=sender) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if refused:
        raise RuntimeError(f"{len(refused)} of {messages} messages were refused (statuses "
                           f"{sorted(set(refused))})")
    return accepted[0], elapsed


def bench_server(home: Path, samples: int, messages: int) -> dict[str, float]:
    port = free_port()
    proc = start_server(home, port)
    token = (home / "token").read_text().strip()
    out: dict[str, float] = {}
    try:
        c = Client(port, token)
        actor = c.json("POST", "/actors", payload={"image": TRIVIAL_TAG, "max_workers": 2})
        aid = actor["id"]
        c.json("POST", f"/actors/{aid}/workers", form={"num": "2"})
        wait_workers(c, aid, 2)
        time.sleep(1.0)
        (out["rss_server_mb"], out["rss_total_mb"], out["pss_total_mb"],
         out["rss_processes"]) = rss_mb(proc.pid)

        sync_lat = []
        for i in range(samples + 5):
            t0 = time.perf_counter()
            status, body = c.call("POST", f"/actors/{aid}/messages?_abaco_synchronous=true",
                                  b"message=x", "application/x-www-form-urlencoded")
            if status != 200 or b"ok" not in body:
                raise RuntimeError(f"sync message failed: {status} {body[:200]!r}")
            if i >= 5:
                sync_lat.append((time.perf_counter() - t0) * 1000)
        out["sync_median_ms"], out["sync_p95_ms"] = statistics.median(sync_lat), pct(sync_lat, 95)

        async_lat = []
        for _ in range(samples):
            t0 = time.perf_counter()
            eid = c.json("POST", f"/actors/{aid}/messages", form={"message": "x"})["execution_id"]
            while c.json("GET", f"/actors/{aid}/executions/{eid}")["status"] != "COMPLETE":
                time.sleep(0.002)
            async_lat.append((time.perf_counter() - t0) * 1000)
        out["async_median_ms"], out["async_p95_ms"] = statistics.median(async_lat), pct(async_lat, 95)

        # Enqueue burst with 4 keep-alive clients while the 2 workers execute the messages.
        before = c.json("GET", f"/actors/{aid}/executions")["total_executions"]
        cpu0 = tree_cpu_s(proc.pid)
        n, seconds = burst(port, token, aid, messages, clients=8)
        accepted = [n]
        out["enqueue_per_s"] = n / seconds

        # Sustained throughput: executions finished per second while the mailbox still had work.
        waiting0 = c.json("GET", f"/actors/{aid}/messages")["messages"]
        t_start = time.perf_counter()
        while True:
            waiting = c.json("GET", f"/actors/{aid}/messages")["messages"]
            if waiting == 0:
                break
            time.sleep(0.05)
        t_end = time.perf_counter()
        drained = waiting0 - waiting
        out["exec_per_s_2"] = drained / (t_end - t_start) if t_end > t_start else float("nan")
        out["drained"] = drained
        # Everything accepted eventually completes.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            summary = c.json("GET", f"/actors/{aid}/executions")
            if all(e["status"] == "COMPLETE" for e in summary["executions"]) and \
                    summary["total_executions"] == before + accepted[0]:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("not every accepted message completed")
        # CPU of the whole server (API, workers, helpers, sandboxes) per message: enqueued over HTTP,
        # executed, recorded (plus this loop's few status reads).
        out["cpu_ms_per_exec"] = (tree_cpu_s(proc.pid) - cpu0) / accepted[0] * 1000
        # The server's own rate, from the burst's executions' start and finish times (client polling
        # and the HTTP reads above do not count): executions / (last finish - first start).
        burst_execs = summary["executions"][before:] if len(summary["executions"]) > before else []
        starts = [_ts(e.get("start_time") or e.get("startTime")) for e in burst_execs]
        ends = [_ts(e.get("finish_time") or e.get("finishTime")) for e in burst_execs]
        if burst_execs and all(starts) and all(ends):
            out["exec_per_s_2_own_times"] = len(burst_execs) / (max(ends) - min(starts))  # type: ignore[type-var,operator]
        # The API alone (measured last: this actor's failing worker takes a slot of the 2-worker cap).
        # An actor whose image cannot be pulled is in ERROR and has no worker, but its mailbox accepts
        # messages (each committed before the answer) like any other.
        idle = c.json("POST", "/actors", payload={"image": "127.0.0.1:9/bench/unpullable"})["id"]
        deadline = time.monotonic() + 30
        while c.json("GET", f"/actors/{idle}")["status"] != "ERROR" and time.monotonic() < deadline:
            time.sleep(0.05)
        n, seconds = burst(port, token, idle, messages, clients=8)
        out["enqueue_alone_per_s"] = n / seconds
        c.json("DELETE", f"/actors/{idle}/messages")
        n, seconds = burst(port, token, idle, messages, clients=1)
        out["enqueue_alone_1_client_per_s"] = n / seconds
        c.json("DELETE", f"/actors/{idle}")

    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def report(raw: dict[str, float], srv: dict[str, float]) -> str:
    ratio = srv["exec_per_s_2"] / raw["exec_per_s_2"] if raw["exec_per_s_2"] else float("nan")
    rows = [
        ("one execution, median / p95 (ms)", f"{raw['latency_median_ms']:.1f} / {raw['latency_p95_ms']:.1f}",
         f"async→COMPLETE {srv['async_median_ms']:.1f} / {srv['async_p95_ms']:.1f}", ""),
        ("sync round trip, median / p95 (ms)", "-", f"{srv['sync_median_ms']:.1f} / {srv['sync_p95_ms']:.1f}",
         "median <= 25 ms: " + ("ok" if srv["sync_median_ms"] <= 25 else "MISSED")),
        ("executions/s, 2 workers", f"{raw['exec_per_s_2']:.0f}", f"{srv['exec_per_s_2']:.0f}",
         f"{ratio:.0%} of sandbox (>= 70%: " + ("ok" if ratio >= 0.7 else "MISSED") + ")"),
        ("messages accepted/s, API alone", "-", f"{srv['enqueue_alone_per_s']:.0f}",
         ">= 1000: " + ("ok" if srv["enqueue_alone_per_s"] >= 1000 else "MISSED")),
        ("messages accepted/s, 2 workers busy", "-", f"{srv['enqueue_per_s']:.0f}",
         "(same CPUs run the executions)"),
        ("memory, server + 2 idle workers (MB)", "-",
         f"PSS {srv['pss_total_mb']:.0f} (RSS sum {srv['rss_total_mb']:.0f}, server "
         f"{srv['rss_server_mb']:.0f}, {srv['rss_processes']:.0f} processes)",
         "<= 150: " + ("ok" if srv["pss_total_mb"] <= 150 else "MISSED")),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "sandbox library", "", "")])
    w2 = max(len(r[2]) for r in rows + [("", "", "lightabaco server (HTTP)", "")])
    lines = [f"{'':{w0}}  {'sandbox library':{w1}}  {'lightabaco server (HTTP)':{w2}}  target"]
    for r in rows:
        lines.append(f"{r[0]:{w0}}  {r[1]:{w1}}  {r[2]:{w2}}  {r[3]}")
    return "\n".join(lines)


def issue_table(runs: list[dict[str, Any]]) -> str:
    """The issue-14 table: one row per user, the server's numbers next to raw bubblewrap's."""
    head = ("run as", "load before->after", "raw bwrap start med", "raw bwrap 2 runners",
            "sync med (x raw)", "sync p95 (x raw)", "server exec/s (x raw)", "enqueue 8 clients",
            "enqueue, workers busy", "enqueue 1 client", "PSS idle",
            "CPU/exec raw / server (raw/server)")
    rows = []
    for run in runs:
        raw, srv = run["raw"], run["server"]
        start = raw["start_median_ms"]
        rate = srv.get("exec_per_s_2_own_times", srv["exec_per_s_2"])
        rows.append((
            run["user"], f"{run['load_before']:.2f}->{run['load_after']:.2f}", f"{start:.1f} ms",
            f"{raw['exec_per_s_2']:.0f}/s",
            f"{srv['sync_median_ms']:.1f} ms ({srv['sync_median_ms'] / start:.1f}x)",
            f"{srv['sync_p95_ms']:.1f} ms ({srv['sync_p95_ms'] / start:.1f}x)",
            f"{rate:.0f}/s ({rate / raw['exec_per_s_2']:.2f})",
            f"{srv['enqueue_alone_per_s']:.0f}/s", f"{srv['enqueue_per_s']:.0f}/s",
            f"{srv['enqueue_alone_1_client_per_s']:.0f}/s", f"{srv['pss_total_mb']:.0f} MB",
            f"{raw['cpu_ms_per_exec']:.1f} / {srv['cpu_ms_per_exec']:.1f} ms "
            f"({raw['cpu_ms_per_exec'] / srv['cpu_ms_per_exec']:.2f})"))
    targets = ("target", "", "", "", "<= 2x", "<= 3x", ">= 0.8", ">= 2000/s", ">= 1000/s", "", "<= 150 MB",
               "(>= 0.8 on idle cores)")
    widths = [max(len(r[i]) for r in [head, targets, *rows]) for i in range(len(head))]
    lines = ["| " + " | ".join(f"{c:{w}}" for c, w in zip(r, widths)) + " |" for r in [head]]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(f"{c:{w}}" for c, w in zip(r, widths)) + " |" for r in [*rows, targets]]
    return "\n".join(lines)


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything for the current user, in a fresh temporary home."""
    import pwd

    home = Path(tempfile.mkdtemp(prefix="lightabaco-bench-", dir="/tmp"))
    home.chmod(0o711)  # the sandbox user must reach the image store when running as root
    load_before = os.getloadavg()[0]
    try:
        print(f"[{pwd.getpwuid(os.getuid()).pw_name}] building the trivial actor image in {home} ...",
              file=sys.stderr, flush=True)
        build_trivial_image(home)
        print("measuring raw bwrap and the sandbox library ...", file=sys.stderr, flush=True)
        raw = bench_raw(home, args.samples, args.seconds)
        lib = bench_sandbox(home, args.samples, args.seconds)
        print("measuring the server ...", file=sys.stderr, flush=True)
        srv = bench_server(home, args.samples, args.messages)
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    user = pwd.getpwuid(os.getuid()).pw_name
    return {"user": user + (" (sandboxes as the sandbox user)" if os.getuid() == 0 else ""),
            "raw": raw, "sandbox": lib, "server": srv,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def rerun_as(user: str, argv: list[str]) -> dict[str, Any]:
    """Run this benchmark again as `user` (runuser; we are root) and return its JSON. The user may not
    be able to read our interpreter (a pyenv under /root): then the system python3 runs it, with our
    package and our site-packages on its path (same Python minor version)."""
    import site

    pkg_parent = str(Path(__file__).resolve().parents[1])
    paths = [pkg_parent, *site.getsitepackages()]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        probe = subprocess.run(["runuser", "-u", user, "--", python, "-c", "pass"], capture_output=True)
        if probe.returncode == 0:
            break
    else:
        raise RuntimeError(f"{user} can run no {version} interpreter (ours is {sys.executable}); "
                           f"install Debian's {version} or run the benchmark as {user} yourself")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTABACO_")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("HOME", None)
    proc = subprocess.run(["runuser", "-u", user, "--", python, "-m", "lightabaco.bench", *argv,
                           "--json-only"], env=env, cwd="/tmp", stdout=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"the run as {user} failed ({proc.returncode}); see its messages above")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightabaco.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="burst size for enqueue/throughput")
    parser.add_argument("--samples", type=int, default=100, help="latency samples per measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="raw/library throughput window")
    parser.add_argument("--json", action="store_true", help="also print the raw numbers as JSON")
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    parser.add_argument("--also-as", metavar="USER", default=None,
                        help="when run as root: then run everything again as this ordinary user "
                             "(runuser) and print both rows (e.g. lightabaco-test)")
    args = parser.parse_args(argv)
    run = one_run(args)
    if args.json_only:
        print(json.dumps(run))
        return 0
    runs = [run]
    if args.also_as:
        if os.getuid() != 0:
            raise SystemExit("--also-as needs root (it switches users with runuser)")
        passed = [a for a in (argv if argv is not None else sys.argv[1:])]
        skip = False
        forwarded = []
        for a in passed:  # everything but --also-as USER / --json
            if skip:
                skip = False
                continue
            if a == "--also-as":
                skip = True
                continue
            if a.startswith("--also-as=") or a == "--json":
                continue
            forwarded.append(a)
        runs.append(rerun_as(args.also_as, forwarded))
    print()
    print(report(run["sandbox"], run["server"]))
    print()
    print(issue_table(runs))
    if args.json:
        print(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
