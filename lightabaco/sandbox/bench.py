"""Start-up latency and throughput of one execution, side by side with its baselines.

    python -m lightabaco.sandbox.bench [--runs 200] [--podman-runs 50] [--json]

Rows (all run `/bin/true` of the same busybox rootfs, or the host's busybox for the plain row):
  plain subprocess   the program without any sandbox (what a process costs at all)
  raw bwrap          bubblewrap with lightabaco's namespaces on the same rootfs, nothing else
  lightabaco bwrap   the full execution path: scratch dir, binary message file, results socket,
                     log pipe, rlimits, json status, watchdog, wait4 stats, cleanup
  network api        the full path with the API door (a listener made in the sandbox's netns by the
                     helper, relayed by the monitor; issue 11)
  network outbound   the same plus pasta attached to the sandbox's netns (when pasta is installed)
  podman run         the podman backend's full path (when podman works here)
Throughput: executions/s of the full path with 1 and 2 concurrent runner processes (the service
runs one execution per worker process). Noise: the spread of the raw baseline and the load average.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .bwrap import BwrapBackend
from .types import ExecSpec, ImageConfig, Limits, PreparedImage
from .users import sandbox_host_user

APPLETS = ("sh", "true", "cat", "echo")


def make_rootfs(root: Path) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise SystemExit("the benchmark needs a static busybox: apt-get install busybox-static")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "dev", "sys", "tmp", "run", "etc"):
        (root / d).mkdir(exist_ok=True)
    (root / "etc" / "passwd").write_text("app:x:1000:1000::/:/bin/sh\n")
    (root / "_abaco_binary_data").touch()
    (root / "_abaco_results.sock").touch()
    for dirpath, _, _ in os.walk(root):
        os.chmod(dirpath, 0o755)
    return root


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summarize(name: str, times: list[float]) -> dict[str, float | str | int]:
    return {"name": name, "runs": len(times), "median_ms": statistics.median(times) * 1e3,
            "p95_ms": pct(times, 95) * 1e3, "mean_ms": statistics.fmean(times) * 1e3,
            "stdev_ms": (statistics.stdev(times) * 1e3) if len(times) > 1 else 0.0}


def time_calls(fn, runs: int, warmup: int = 5) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def raw_bwrap_argv(rootfs: Path) -> list[str]:
    return ["bwrap", "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--as-pid-1", "--cap-drop", "ALL", "--uid", "1000", "--gid", "1000",
            "--ro-bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--", "/bin/true"]


def spec_for(image: PreparedImage) -> ExecSpec:
    return ExecSpec(image=image, cmd=["/bin/true"], binary_message=b"x",
                    limits=Limits(wall_timeout_s=30))


def _runner(args: tuple[str, str, str, int]) -> int:
    """One throughput worker process: its own backend, `count` executions back to back."""
    rootfs, scratch, log_dir, count = args
    backend = BwrapBackend(Path(scratch))
    image = PreparedImage("sha256:" + "b" * 64, Path(rootfs), ImageConfig(cmd=["/bin/true"]))
    ok = 0
    for i in range(count):
        spec = spec_for(image)
        spec.log_path = Path(log_dir) / f"{os.getpid()}-{i}.log"
        ok += backend.run(spec).exit_code == 0
        os.unlink(spec.log_path)
    return ok


def throughput(rootfs: Path, scratch: Path, workers: int, total: int) -> tuple[float, int]:
    log_dir = scratch / "tp-logs"
    log_dir.mkdir(exist_ok=True)
    per = total // workers
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        pool.map(_runner, [(str(rootfs), str(scratch), str(log_dir), 5)] * workers)  # warm up
        t0 = time.perf_counter()
        ok = sum(pool.map(_runner, [(str(rootfs), str(scratch), str(log_dir), per)] * workers))
        elapsed = time.perf_counter() - t0
    return per * workers / elapsed, ok


def fork_bomb(backend: BwrapBackend, image: PreparedImage) -> dict[str, float | str | int]:
    """Run a shell fork bomb under the default limits; measure how fast it is stopped and how the
    host answers meanwhile (a host `true` spawned every 10 ms)."""
    from . import procstats

    spec = ExecSpec(image=image, cmd=["/bin/sh", "-c", "f() { f | f & }; f; sleep 30"],
                    limits=Limits(wall_timeout_s=30))
    t0 = time.perf_counter()
    ex = backend.start(spec)
    host_lat: list[float] = []
    peak = 0
    while ex.poll() is None:
        s = time.perf_counter()
        subprocess.run(["true"], check=False)
        host_lat.append(time.perf_counter() - s)
        if ex.child_pid:
            peak = max(peak, len(procstats.tree_pids(ex.child_pid, limit=100000)))
        time.sleep(0.01)
    res = ex.wait()
    assert res is not None
    return {"stopped_after_s": time.perf_counter() - t0, "reason": res.reason,
            "peak_processes_seen": peak, "host_true_max_ms": max(host_lat or [0]) * 1e3,
            "host_true_median_ms": statistics.median(host_lat or [0]) * 1e3}


def network_rows(backend: BwrapBackend, image: PreparedImage, runs: int) -> list[dict[str, Any]]:
    """The full path in the `api` and `outbound` network modes (the door leads to a listener here)."""
    import socket

    from . import network

    if runs <= 0:
        return []
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(8)
    relay = network.ApiRelay(upstream=("127.0.0.1", upstream.getsockname()[1]), port=8000)
    rows: list[dict[str, Any]] = []
    try:
        for mode in ("api", "outbound"):
            if mode == "outbound" and network.pasta_path() is None:
                rows.append({"name": "network outbound", "skipped": "pasta (Debian's passt) is not installed"})
                continue

            def one(mode: str = mode) -> None:
                spec = spec_for(image)
                spec.network, spec.api_relay = mode, relay
                res = backend.run(spec)
                if res.exit_code != 0:
                    raise RuntimeError(res.reason)
                os.unlink(res.log_path)
            try:
                rows.append(summarize(f"lightabaco bwrap network {mode}", time_calls(one, runs)))
            except RuntimeError as exc:
                rows.append({"name": f"network {mode}", "skipped": str(exc)[:200]})
    finally:
        upstream.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lightabaco.sandbox.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="runs per latency row (default 200)")
    ap.add_argument("--podman-runs", type=int, default=50,
                    help="runs for the podman row (about 0.2-0.3 s each; default 50, 0 to skip)")
    ap.add_argument("--throughput", type=int, default=400,
                    help="executions per throughput measurement (default 400)")
    ap.add_argument("--fork-bomb", action="store_true",
                    help="also run a fork bomb under the default limits and report the host's latency")
    ap.add_argument("--network-runs", type=int, default=None,
                    help="runs for each network mode row (default: --runs; 0 to skip)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = ap.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="lightabaco-bench-"))
    base.chmod(0o711)  # as root, the sandbox user must reach the rootfs and the scratch dir
    try:
        return _bench(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _bench(args: argparse.Namespace, base: Path) -> int:
    rootfs = make_rootfs(base / "rootfs")
    scratch = base / "exec"
    backend = BwrapBackend(scratch)
    report = backend.probe()
    if not report.usable:
        print("bwrap is not usable here: " + "; ".join(report.reasons), file=sys.stderr)
        return 2
    host_user = sandbox_host_user()
    as_user: dict[str, Any] = ({"user": host_user.uid, "group": host_user.gid, "extra_groups": []}
                               if host_user else {})
    image = PreparedImage("sha256:" + "b" * 64, rootfs, ImageConfig(cmd=["/bin/true"]))
    load_before = os.getloadavg()[0]
    rows = []
    busybox = str(rootfs / "bin" / "busybox")
    rows.append(summarize("plain subprocess (busybox true)", time_calls(
        lambda: subprocess.run([busybox, "true"], check=True, **as_user), args.runs)))
    raw_times = time_calls(lambda: subprocess.run(raw_bwrap_argv(rootfs), check=True, **as_user),
                           args.runs)
    rows.append(summarize("raw bwrap (same rootfs, /bin/true)", raw_times))

    def full() -> None:
        res = backend.run(spec_for(image))
        if res.exit_code != 0:
            raise SystemExit(f"lightabaco execution failed: {res.reason}")
        os.unlink(res.log_path)

    rows.append(summarize("lightabaco bwrap full path", time_calls(full, args.runs)))
    rows.extend(network_rows(backend, image, args.runs if args.network_runs is None else args.network_runs))
    if args.podman_runs > 0:
        from .podman import PodmanBackend

        pb = PodmanBackend(base / "podman-exec")
        if pb.probe().usable:
            def pod() -> None:
                res = pb.run(spec_for(image))
                if res.exit_code != 0:
                    raise SystemExit(f"podman execution failed: {res.reason}")
            try:
                rows.append(summarize("podman run (backend full path)",
                                      time_calls(pod, args.podman_runs, warmup=2)))
            finally:
                from .podman import short_run_dir

                shutil.rmtree(short_run_dir(pb.base), ignore_errors=True)
        else:
            rows.append({"name": "podman run", "skipped": "; ".join(pb.probe().reasons)})
    tp1, ok1 = throughput(rootfs, scratch, 1, args.throughput)
    tp2, ok2 = throughput(rootfs, scratch, 2, args.throughput)
    bomb = fork_bomb(backend, image) if args.fork_bomb else None
    load_after = os.getloadavg()[0]
    raw_med = statistics.median(raw_times)
    full_med = rows[2]["median_ms"] / 1e3  # type: ignore[operator]
    out = {
        "host": {"cpus": os.cpu_count(), "as_root": host_user is not None,
                 "sandbox_user": host_user.name if host_user else None,
                 "bwrap": report.version, "loadavg_before": load_before, "loadavg_after": load_after},
        "latency": rows,
        "ratio_full_over_raw_bwrap_median": full_med / raw_med,
        "throughput_per_s": {"1 runner": tp1, "2 runners": tp2},
        "throughput_failures": (args.throughput - ok1) + (args.throughput - ok2),
        "fork_bomb": bomb,
        "noise_raw_bwrap": {"p95_over_median": pct(raw_times, 95) / raw_med,
                            "stdev_over_median": statistics.stdev(raw_times) / raw_med},
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"lightabaco sandbox benchmark - {os.cpu_count()} cpus, bwrap {report.version}, "
          f"{'root -> sandbox user ' + host_user.name if host_user else 'unprivileged'}, "
          f"load {load_before:.2f} -> {load_after:.2f}")
    print(f"{'':38} {'runs':>5} {'median':>9} {'p95':>9} {'mean':>9} {'stdev':>8}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['name']:38} skipped: {r['skipped']}")
            continue
        print(f"{r['name']:38} {r['runs']:>5} {r['median_ms']:>7.2f}ms {r['p95_ms']:>7.2f}ms "
              f"{r['mean_ms']:>7.2f}ms {r['stdev_ms']:>6.2f}ms")
    print(f"full path / raw bwrap (median): {out['ratio_full_over_raw_bwrap_median']:.2f}x "
          "(target <= 1.5x)")
    print(f"throughput, trivial actor: {tp1:.0f}/s with 1 runner, {tp2:.0f}/s with 2 runners "
          f"(target >= 200/s); failures: {out['throughput_failures']}")
    if bomb:
        print(f"fork bomb (default limits): stopped after {bomb['stopped_after_s']:.2f} s, "
              f"peak {bomb['peak_processes_seen']} processes seen, host `true` median "
              f"{bomb['host_true_median_ms']:.1f} ms / max {bomb['host_true_max_ms']:.1f} ms; "
              f"reason: {bomb['reason']}")
    noise = out["noise_raw_bwrap"]
    print(f"noise (raw bwrap): p95/median {noise['p95_over_median']:.2f}, "
          f"stdev/median {noise['stdev_over_median']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
