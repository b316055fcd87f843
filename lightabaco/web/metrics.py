"""`/metrics` in Prometheus's text format: what the API process counts itself (requests by route
template, status and latency; messages accepted and refused) plus what the database knows at scrape time
(executions by final state, runtime and start-up histograms, queue depth, workers, stored bytes, pulls).

Each app gets its own CollectorRegistry, so two apps in one process (tests) never share counters.
"""

from __future__ import annotations

import hmac
import logging
from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from lightabaco.queries import telemetry
from lightabaco.sharing import auth
from lightabaco.web.envelope import error

log = logging.getLogger(__name__)

# Upper bounds in seconds. Executions here take milliseconds to minutes; start-up includes queue wait.
RUNTIME_BOUNDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
STARTUP_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ACCESS_MODES = ("open", "loopback", "token")
LOOPBACK = ("127.", "::1", "::ffff:127.")

ACCESS_DENIED = ("/metrics needs the owner token from this address: send 'Authorization: Bearer <token>' "
                 "(the token printed by `lightabaco token`), or scrape from the server's own machine, or set "
                 "LIGHTABACO_METRICS_ACCESS=open.")


class DatabaseCollector:
    """Reads the database when Prometheus scrapes; one aggregate query per family."""

    def __init__(self) -> None:
        self.failed = 0

    def describe(self) -> Iterable[Metric]:
        return []  # collected only on scrape: registering must not touch the database

    def collect(self) -> Iterable[Metric]:
        try:
            snap = telemetry.snapshot(RUNTIME_BOUNDS, STARTUP_BOUNDS)
        except Exception as exc:  # a locked or closed database must not break the scrape of the rest
            self.failed += 1
            log.warning("metrics: database figures unavailable this scrape (%s)", exc)
            up = GaugeMetricFamily("lightabaco_database_scrape_ok", "1 when the database figures were read")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("lightabaco_database_scrape_ok", "1 when the database figures were read")
        up.add_metric([], 1)
        yield up
        finished = CounterMetricFamily(
            "lightabaco_executions_finished", "Executions that ended, by actor and final state (existing records)",
            labels=["tenant", "actor", "status"])
        active = GaugeMetricFamily("lightabaco_executions_active", "Executions waiting or running, by state",
                                   labels=["status"])
        active_counts: dict[str, int] = {"SUBMITTED": 0, "RUNNING": 0}
        for tenant, actor, status, n in snap.executions:
            if status in ("COMPLETE", "ERROR"):
                finished.add_metric([tenant, actor, status], n)
            else:
                active_counts[status] = active_counts.get(status, 0) + n
        for status, n in sorted(active_counts.items()):
            active.add_metric([status], n)
        yield finished
        yield active
        yield _histogram("lightabaco_execution_runtime_seconds",
                         "Wall time of finished executions (finish_time - start_time)", snap.runtime)
        yield _histogram("lightabaco_execution_startup_seconds",
                         "From message accepted to sandbox start (start_time - message_received_time; "
                         "includes time waiting in the queue)", snap.startup)
        queue = GaugeMetricFamily("lightabaco_queue_depth", "Messages waiting or leased, per actor",
                                  labels=["tenant", "actor"])
        for tenant, actor, n in snap.queue_depth:
            queue.add_metric([tenant, actor], n)
        yield queue
        workers = GaugeMetricFamily("lightabaco_workers", "Worker records by status", labels=["status"])
        for status, n in snap.workers:
            workers.add_metric([status], n)
        yield workers
        actors = GaugeMetricFamily("lightabaco_actors", "Actors by status", labels=["status"])
        for status, n in snap.actors:
            actors.add_metric([status], n)
        yield actors
        yield _gauge("lightabaco_results_stored_bytes", "Bytes of results not yet fetched", snap.result_bytes)
        yield _gauge("lightabaco_results_stored", "Results not yet fetched", snap.results)
        yield _gauge("lightabaco_logs_stored_bytes", "Bytes of execution logs kept", snap.log_bytes)
        pulls = CounterMetricFamily("lightabaco_image_pulls", "Image pulls for actors, by pull processes",
                                    labels=["outcome"])
        pulls.add_metric(["ok"], snap.counters.get(telemetry.IMAGE_PULLS, 0))
        pulls.add_metric(["failed"], snap.counters.get(telemetry.IMAGE_PULL_FAILURES, 0))
        yield pulls


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def _histogram(name: str, doc: str, h: telemetry.Histogram) -> HistogramMetricFamily:
    buckets = [(_bound(b), float(n)) for b, n in h.buckets] + [("+Inf", float(h.count))]
    fam = HistogramMetricFamily(name, doc)
    fam.add_metric([], buckets, sum_value=h.total)
    return fam


def _bound(b: float) -> str:
    return repr(float(b))


class ApiMetrics:
    """What the API process measures: every request by method, route template and status, and its
    latency; messages accepted or refused. Route templates (not raw paths) keep the label set bounded."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("lightabaco_http_requests", "API requests by method, route template and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("lightabaco_http_request_duration_seconds",
                                 "API request latency by method and route template", ["method", "route"],
                                 buckets=LATENCY_BOUNDS, registry=self.registry)
        self.messages = Counter("lightabaco_messages_received", "Messages sent to actors, accepted or refused "
                                "(by HTTP status)", ["outcome", "status"], registry=self.registry)
        self.database = DatabaseCollector()
        self.registry.register(self.database)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if method == "POST" and route == "/actors/{actor_id}/messages":
            self.messages.labels("accepted" if status < 400 else "refused", str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def is_loopback(host: str | None) -> bool:
    return bool(host) and (host == "localhost" or any(str(host).startswith(p) for p in LOOPBACK))


def allowed(request: Request, mode: str, owner_token: str) -> bool:
    """open: anyone; loopback: clients on this machine, others with the owner token; token: the owner
    token always. Behind a reverse proxy on the same machine every client looks local: use `token`."""
    if mode == "open":
        return True
    client = request.client.host if request.client else None
    if mode == "loopback" and is_loopback(client):
        return True
    header = request.headers.get("authorization", "")
    sent = header[7:].strip() if header[:7].lower() == "bearer " else request.headers.get("x-tapis-token", "")
    return bool(sent) and hmac.compare_digest(sent.encode(), owner_token.encode())


async def metrics_endpoint(request: Request) -> Response:
    services = request.app.state.services
    mode = getattr(services.settings, "metrics_access", "loopback")
    owner = auth.get_authenticator(services).owner().token
    if not allowed(request, mode, owner):
        return error(ACCESS_DENIED, 403)
    metrics: ApiMetrics = request.app.state.web_metrics
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def check_mode(mode: str) -> None:
    if mode not in ACCESS_MODES:
        raise ValueError(f"LIGHTABACO_METRICS_ACCESS={mode!r} is not valid; use one of: {', '.join(ACCESS_MODES)}")
