"""`lightabaco serve`: one process runs the HTTP API (uvicorn), the worker supervisor and a ticker
(cron, housekeeping). The same parts can run apart, as the Procfile does:

    python -m lightabaco.server serve   [--host H] [--port P] [--home DIR] [--workers N] ...
    python -m lightabaco.server api     (HTTP only; another process supervises workers)
    python -m lightabaco.server workers (supervisor and ticker only)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import schedule

from lightabaco.config import Settings
from lightabaco.abaco import housekeeping
from lightabaco.abaco.services import Services
from lightabaco.automation import cron
from lightabaco.automation.subscriptions import subscribe as subscribe_automation
from lightabaco.store import db

log = logging.getLogger("lightabaco.server")

EXIT_DAMAGED_DATABASE = 3


def first_run(settings: Settings) -> str:
    """Create the home, the database and the owner token; returns the token ("" with --auth none).
    Safe to call again: nothing existing is replaced."""
    # 0711: others (the sandbox user, when we run as root) may traverse to the image store but not
    # list the home, which holds the token, the signing key and the database (nonce ids are credentials).
    settings.home.mkdir(mode=0o711, parents=True, exist_ok=True)
    for sub in (settings.images_dir, settings.exec_dir, settings.run_dir):
        sub.mkdir(mode=0o711, parents=True, exist_ok=True)
    refuse_damaged_database(settings)
    db.connect(settings, create=True)
    _restrict_database_files(settings)
    if settings.auth == "none":
        return ""
    from lightabaco.sharing import auth

    return auth.ensure_owner_token(settings.home, settings.tenant)


def refuse_damaged_database(settings: Settings) -> None:
    """Stop before serving from a damaged SQLite file: every request would fail with 500 otherwise.
    Prints what is wrong, the file and how to recover, and exits with status 3."""
    url = settings.database_url or ""
    if url and not url.startswith("sqlite"):
        return
    path = Path(url[len("sqlite:///"):]) if url else settings.db_path
    try:
        db.check_integrity(path)
    except db.DatabaseCorrupt as exc:
        print(f"lightabaco: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_DAMAGED_DATABASE) from None


def _restrict_database_files(settings: Settings) -> None:
    """Make an SQLite database in the home readable by its owner only (with its WAL and shm files)."""
    url = settings.database_url or ""
    if url and not url.startswith("sqlite"):
        return
    for path in settings.home.glob("*.db*"):
        try:
            if path.is_file() and path.stat().st_uid == os.geteuid():
                path.chmod(0o600)
        except OSError:
            pass


def build_services(settings: Settings) -> Services:
    from lightabaco.workers.notify import DoorbellNotifier

    subscribe_automation()  # links and webhooks hear the lifecycle's events in this process
    return Services(settings, notifier=DoorbellNotifier(settings.home, settings.pool_processes()))


class Ticker:
    """Cron, housekeeping: periodic jobs on a `schedule` scheduler in one daemon thread."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.scheduler = schedule.Scheduler()
        self._stop = threading.Event()
        s = services.settings
        self.scheduler.every(s.cron_tick_s).seconds.do(self._guard, self.cron)
        self.scheduler.every(s.housekeeping_s).seconds.do(self._guard, self.housekeep)
        self._thread = threading.Thread(target=self._loop, name="ticker", daemon=True)

    def cron(self) -> None:
        fired = int(cron.tick(self.services, time.time()) or 0)
        if fired:
            log.info("cron: %d execution(s) queued", fired)

    def housekeep(self) -> None:
        housekeeping.run(self.services)

    @staticmethod
    def _guard(job: Any) -> None:
        try:
            job()
        except Exception:  # one failing job must not stop the others
            log.exception("periodic job %s failed", getattr(job, "__name__", job))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scheduler.run_pending()
            self._stop.wait(min(max(self.scheduler.idle_seconds or 1.0, 0.1), 1.0))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


# File descriptors kept for the database, worker pipes, doorbells, logs and images when the connection
# cap is derived from RLIMIT_NOFILE.
FD_RESERVE = 256


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (idle clients must not starve housekeeping of
    descriptors: EMFILE); returns the soft limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_cap(settings: Settings, fd_limit: int) -> int:
    """max_connections, lowered so that connections alone never use every descriptor."""
    cap = min(settings.max_connections, max(fd_limit - FD_RESERVE, 16))
    if cap < settings.max_connections:
        log.warning("max_connections lowered to %d: the open-file limit is %d (raise it with ulimit -n)",
                    cap, fd_limit)
    return cap


def _uvicorn_server(settings: Settings, services: Services) -> Any:
    import uvicorn

    from lightabaco.http.app import create_app
    from lightabaco.http.connections import guarded_protocol

    app = create_app(services)
    protocol = guarded_protocol(connection_cap(settings, raise_fd_limit()), settings.header_timeout_s,
                                settings.body_timeout_s)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                            access_log=False, lifespan="on", server_header=False,
                            timeout_keep_alive=30, http=protocol,
                            # the listen queue: a burst of connections waits here, not in our memory
                            backlog=2048)
    return uvicorn.Server(config)


def drain_on_signal(server: Any, services: Services, supervisor: Any, grace_s: float) -> None:
    """SIGTERM/SIGINT: refuse new messages (503), let running executions finish (up to `grace_s`,
    the rest goes back to the queue), then stop uvicorn. A second signal stops at once."""
    exit_now = server.handle_exit

    def drain_then_exit() -> None:
        try:
            if supervisor is not None:
                finished = supervisor.drain(grace_s)
                log.info("drain finished (%s)", "all executions done" if finished else
                         "unfinished executions re-queued")
        finally:
            server.should_exit = True

    def on_signal(sig: int, frame: Any) -> None:
        if services.draining:
            exit_now(sig, frame)
            server.should_exit = True
            return
        services.draining = True
        log.info("signal %d: draining (new messages get 503; grace %.0f s)", sig, grace_s)
        threading.Thread(target=drain_then_exit, name="drain", daemon=True).start()

    server.handle_exit = on_signal


def serve(settings: Settings, api: bool = True, workers: bool = True, host_only: bool = False) -> None:
    """Run until SIGINT/SIGTERM. With api=False only the supervisor and ticker run (and vice versa).
    host_only: a worker host (`lightabaco workers --database-url ...`): the pool and its supervisor,
    no ticker (cron, housekeeping and webhooks stay with the API server), no owner token."""
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_fd_limit()
    if host_only:
        settings.home.mkdir(mode=0o711, parents=True, exist_ok=True)
        for sub in (settings.images_dir, settings.exec_dir, settings.run_dir):
            sub.mkdir(mode=0o711, parents=True, exist_ok=True)
        db.connect(settings, create=True)
    else:
        first_run(settings)
    services = build_services(settings)
    supervisor = ticker = pilots = None
    slurm_mode = settings.slurm and api and workers  # `serve --slurm`: executions run in Slurm pilot jobs
    if workers and not slurm_mode:
        from lightabaco.workers.supervisor import Supervisor

        supervisor = Supervisor(services)
        supervisor.start(recover=True)
    if slurm_mode:
        from lightabaco.slurm.pilots import PilotConfig, PilotManager

        pilots = PilotManager(PilotConfig.from_settings(settings))
        pilots.start()
        log.info("slurm mode: no local workers; pilot jobs %s run worker hosts", pilots.cfg.job_name)
    if workers and not host_only:  # cron, housekeeping and webhooks stay with the API server's side
        ticker = Ticker(services)
        ticker.start()
        from lightabaco.automation import events

        events.start_delivery(services)  # webhooks a previous run left pending go out now
    try:
        if api:
            server = _uvicorn_server(settings, services)
            drain_on_signal(server, services, supervisor, settings.drain_grace_s)
            log.info("lightabaco listening on http://%s:%d (home %s)", settings.host, settings.port,
                     settings.home)
            from lightabaco.endpoint import published

            log.info("dashboard /ui/, API description /docs and /openapi.json, Prometheus /metrics, /health")
            with published(settings.home, settings.host, settings.port):  # lets the CLI find this port
                server.run()  # uvicorn handles SIGINT/SIGTERM and returns
        else:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
            if supervisor is not None:
                services.draining = True
                supervisor.drain(settings.drain_grace_s)
    finally:
        if pilots is not None:
            pilots.stop(cancel=True)
        if ticker is not None:
            ticker.stop()
        if supervisor is not None:
            supervisor.stop()
        db.close()


def worker_host_settings(database_url: str | None, api: str, home: str | Path | None, pool: int | None = None,
                         host_name: str | None = None) -> Settings:
    """Settings of a worker host: the shared database (None: LIGHTABACO_DATABASE_URL), the API it belongs
    to (images come from there, and `api`-network sandboxes reach it), its own home and pool, live logs
    copied into the database. In a Slurm job the default host name says the node and the job id, so each
    execution's `host` records where it ran (`node07 (Slurm job 4242)`)."""
    import urllib.parse

    from lightabaco.slurm.identity import describe, host_identity

    settings = Settings.from_env(home=home, database_url=database_url, images_source=api or None,
                                 pool_size=pool, host_name=host_name)
    if not settings.host_name:
        identity = host_identity()
        if identity["slurm_job_id"]:
            settings.host_name = describe(identity)
    if settings.live_log_push_s <= 0:
        settings.live_log_push_s = 1.0  # the API is elsewhere: it reads running logs from the database
    if api and not settings.network_api_upstream:
        parts = urllib.parse.urlsplit(api)
        if parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            port = parts.port or (443 if parts.scheme == "https" else 80)
            settings.network_api_upstream = f"{host}:{port}"
    return settings


def worker_host(database_url: str | None, api: str, home: str | Path | None, pool: int | None = None,
                host_name: str | None = None, settings: Settings | None = None) -> None:
    """`lightabaco workers --database-url URL --api URL --home DIR [--pool N]`: join the pool of the
    deployment whose database is `database_url`, until SIGTERM (which drains). `settings`: already made
    by `worker_host_settings` (the CLI checks them first)."""
    serve(settings or worker_host_settings(database_url, api, home, pool, host_name), api=False, workers=True,
          host_only=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightabaco.server")
    parser.add_argument("mode", nargs="?", default="serve", choices=["serve", "api", "workers"])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--home")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--backend", choices=["auto", "bwrap", "podman"])
    parser.add_argument("--auth", choices=["token", "none"])
    parser.add_argument("--case", choices=["snake", "camel"])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="any other setting, e.g. --set sync_timeout_s=5")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: getattr(args, k) for k in
                                 ("host", "port", "home", "workers", "backend", "auth", "case")}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name.strip()] = value
    settings = Settings.from_env(**overrides)
    serve(settings, api=args.mode in ("serve", "api"), workers=args.mode in ("serve", "workers"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
