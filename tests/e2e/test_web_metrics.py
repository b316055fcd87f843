"""/metrics, /openapi.json, /docs and /ui/ on a live server: the counters and histograms move as real
executions run (bubblewrap), the page parses with prometheus-client's own parser, access follows the
setting, and the API description validates and lists every route."""

from __future__ import annotations

import json
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.server import LiveServer

pytestmark = pytest.mark.e2e


def spec_validator():
    """openapi-spec-validator's entry point: `validate` from 0.7 on, `validate_spec` before (0.5 and 0.6
    are what tapipy's openapi-core allows)."""
    module = pytest.importorskip("openapi_spec_validator")
    return getattr(module, "validate", None) or module.validate_spec


def scrape(server: LiveServer) -> dict[str, dict[tuple, float]]:
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def total(metrics: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for k, v in metrics.get(name, {}).items() if want <= set(k))


def test_counters_and_histograms_move_as_executions_run(live_server: LiveServer) -> None:
    before = scrape(live_server)
    ok = live_server.register("abacosamples/test")
    bad = live_server.register("lightabaco/exit3")
    done = [live_server.send(ok["id"], f"m{i}") for i in range(3)]
    failed = live_server.send(bad["id"], "x")
    for eid in done:
        live_server.wait_execution(ok["id"], eid)
    live_server.wait_execution(bad["id"], failed, statuses=("COMPLETE", "ERROR"))
    refused = live_server.post(f"/actors/{ok['id']}/messages", data={}, headers={"Content-Type": "text/plain"})
    assert refused.status_code == 400
    after = scrape(live_server)

    assert total(after, "lightabaco_executions_finished_total", actor=ok["id"], status="COMPLETE") == 3
    # exit code 3 is a COMPLETE execution with a non-zero exit code in Abaco's model
    assert total(after, "lightabaco_executions_finished_total", actor=bad["id"]) == 1
    for hist in ("lightabaco_execution_runtime_seconds", "lightabaco_execution_startup_seconds"):
        assert total(after, hist + "_count") >= total(before, hist + "_count") + 4
        assert total(after, hist + "_sum") > total(before, hist + "_sum")
        inf = value(after, hist + "_bucket", le="+Inf")
        assert inf == total(after, hist + "_count")
    assert total(after, "lightabaco_messages_received_total", outcome="accepted") >= \
        total(before, "lightabaco_messages_received_total", outcome="accepted") + 4
    assert total(after, "lightabaco_messages_received_total", outcome="refused") >= 1
    # API requests by route template (never by raw path, so ids do not appear in labels)
    routes = {dict(k).get("route") for k in after["lightabaco_http_requests_total"]}
    assert "/actors/{actor_id}/messages" in routes
    assert not any(ok["id"] in (r or "") for r in routes)
    assert total(after, "lightabaco_http_request_duration_seconds_count",
                 route="/actors/{actor_id}/executions/{execution_id}") >= 1
    assert ("actor", ok["id"]) in {kv for k in after["lightabaco_queue_depth"] for kv in k}
    assert total(after, "lightabaco_queue_depth", actor=ok["id"]) == 0
    assert total(after, "lightabaco_workers") >= 2
    assert value(after, "lightabaco_logs_stored_bytes") > value(before, "lightabaco_logs_stored_bytes")
    assert value(after, "lightabaco_database_scrape_ok") == 1


def test_queue_depth_counts_waiting_messages(live_server: LiveServer) -> None:
    actor = live_server.register("lightabaco/sleep", stateless=False,
                                 default_environment={"ITERATIONS": "1", "SLEEP": "1"})
    ids = [live_server.send(actor["id"], f"q{i}") for i in range(3)]
    deadline = time.monotonic() + 5
    seen = 0.0
    while time.monotonic() < deadline and seen < 2:
        seen = total(scrape(live_server), "lightabaco_queue_depth", actor=actor["id"])
    assert seen >= 2  # a stateful actor runs one at a time: the others wait in the mailbox
    for eid in ids:
        live_server.wait_execution(actor["id"], eid, timeout=60)
    assert total(scrape(live_server), "lightabaco_queue_depth", actor=actor["id"]) == 0


def test_result_bytes_are_counted(live_server: LiveServer) -> None:
    from tests.fixtures.server import RESULT_IMAGE

    actor = live_server.register(RESULT_IMAGE)
    before = value(scrape(live_server), "lightabaco_results_stored_bytes")
    eid = live_server.send(actor["id"])
    live_server.wait_execution(actor["id"], eid)
    assert value(scrape(live_server), "lightabaco_results_stored_bytes") >= before + len(b"hello")
    assert live_server.get(f"/actors/{actor['id']}/executions/{eid}/results").content == b"hello"


def test_metrics_access_needs_the_owner_token_when_configured(server_factory) -> None:
    server = server_factory(metrics_access="token")
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 403 and "owner token" in r.json()["message"]
    r = requests.get(server.url + "/metrics", headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert r.status_code == 403
    users = server.post("/actors/admin/users", json={"username": "alice", "role": "admin"}).json()["result"]
    r = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {users['token']}"}, timeout=10)
    assert r.status_code == 403  # an admin user is not the instance owner
    r = requests.get(server.url + "/metrics", headers=server.headers(), timeout=10)
    assert r.status_code == 200 and "lightabaco_http_requests_total" in r.text


def test_openapi_validates_and_lists_every_route(live_server: LiveServer) -> None:
    validate = spec_validator()

    r = requests.get(live_server.url + "/openapi.json", timeout=10)
    assert r.status_code == 200
    doc = r.json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert "/actors/{actor_id}/messages" in doc["paths"]
    assert "post" in doc["paths"]["/actors/{actor_id}/messages"]
    undocumented = [(m, p) for p, item in doc["paths"].items() for m, op in item.items() if op.get("x-undocumented")]
    assert not undocumented


def test_pages_are_served_from_the_package_without_auth(live_server: LiveServer) -> None:
    for path, needle in (("/ui/", "lightabaco"), ("/ui/app.js", "sessionStorage"), ("/ui/style.css", ":focus-visible"),
                         ("/docs", "/docs/docs.js"), ("/docs/docs.js", "openapi.json")):
        r = requests.get(live_server.url + path, timeout=10)
        assert r.status_code == 200, (path, r.text)
        assert needle in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "http://" not in r.text.replace("http://127.0.0.1", "") and "https://" not in r.text  # no CDN
    for sneaky in ("/ui/../token", "/ui/%2e%2e%2ftoken", "/ui/..%2ftoken", "/docs/%2e%2e%2f%2e%2e%2ftoken"):
        r = requests.get(live_server.url + sneaky, timeout=10)
        assert r.status_code in (400, 404) and live_server.token not in r.text, sneaky
    assert requests.get(live_server.url + "/ui/nothing.js", timeout=10).status_code == 404
    r = requests.get(live_server.url + "/", allow_redirects=False, timeout=10)
    assert r.status_code in (302, 307) and r.headers["location"] == "/ui/"


def test_log_stream_follows_a_running_execution(live_server: LiveServer) -> None:
    actor = live_server.register("lightabaco/sleep", default_environment={"ITERATIONS": "3", "SLEEP": "1"})
    eid = live_server.send(actor["id"], "streamed")
    url = f"{live_server.url}/actors/{actor['id']}/executions/{eid}/logs/stream"
    assert requests.get(url, timeout=10).status_code in (400, 401, 403)  # the API's own authentication
    events: list[tuple[float, str, str]] = []
    started = time.monotonic()
    with requests.get(url, headers=live_server.headers(), stream=True, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((time.monotonic() - started, name, line[6:]))
    names = [n for _, n, _ in events]
    assert names[-1] == "end" and '"COMPLETE"' in events[-1][2]
    logs = [(t, d) for t, n, d in events if n == "log"]
    assert len(logs) >= 2, events  # the log arrived in pieces while it ran, not once at the end
    assert logs[0][0] < events[-1][0] - 1.0
    text = "".join(json.loads(d)["text"] for _, d in logs)
    assert "sleeper start streamed" in text and "iteration 3" in text
    other = live_server.get(f"/actors/{actor['id']}/executions/nope/logs/stream")
    assert other.status_code == 404 and other.json()["status"] == "error"
