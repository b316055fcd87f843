"""Cron, links and webhooks on a live server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytestmark = pytest.mark.e2e


def result(r):
    assert r.status_code == 200, r.text
    return r.json()["result"]


def executions(srv, aid):
    return result(srv.get(f"/actors/{aid}/executions"))["executions"]


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_cron_execution_runs_abacos_message(live_server):
    srv = live_server
    actor = srv.register("abacosamples/test", cron_schedule="now + 1 hour")
    assert actor["cron_on"] is True and actor["cron_schedule"] == "now + 1 hour"
    first_next = actor["cron_next_ex"]
    # the server's ticker may already have fired it; the admin trigger runs a pass right now
    result(srv.post("/actors/admin/cron"))
    [ex] = wait_for(lambda: executions(srv, actor["id"]), what="the cron execution")
    detail = srv.wait_execution(actor["id"], ex["id"])
    assert detail["executor"] == "cron"
    logs = srv.logs(actor["id"], ex["id"])
    assert "Contents of MSG: This is your cron execution" in logs and "_abaco_username" not in logs
    updated = result(srv.get(f"/actors/{actor['id']}"))
    assert updated["cron_next_ex"] != first_next  # moved to the next hour
    result(srv.post("/actors/admin/cron"))  # same hour again: nothing more
    assert len(executions(srv, actor["id"])) == 1
    # switching cron off keeps the schedule
    off = result(srv.put(f"/actors/{actor['id']}", json={"image": "abacosamples/test",
                                                            "cron_schedule": "2099-09-6 20 + 3 months",
                                                            "cron_on": False}))
    assert off["cron_on"] is False and off["cron_schedule"] == "2099-09-6 20 + 3 months"
    assert off["cron_next_ex"] == "2099-09-6 20"


@pytest.mark.parametrize("schedule, text", [
    ("2020-06-21 14 + 6 hours", "The starting datetime is old"),
    ("garbage", "The cron is not in the correct format"),
    ("2099-06-21 14 + 6 flimflams", "flimflams is an invalid unit of time"),
])
def test_cron_refusals(live_server, schedule, text):
    r = live_server.post("/actors", json={"image": "abacosamples/test", "cron_schedule": schedule})
    assert r.status_code == 400 and text in r.json()["message"]


def test_link_chain_runs_and_cycles_are_refused(live_server):
    srv = live_server
    last = srv.register("abacosamples/test", stateless=False)
    middle = srv.register("abacosamples/test", stateless=False, link=last["id"])
    first = srv.register("abacosamples/test", link=middle["id"])
    eid = srv.send(first["id"], "start of the chain")
    srv.wait_execution(first["id"], eid)

    def events_of(aid, n):
        runs = executions(srv, aid)
        done = [e for e in runs if e["status"] == "COMPLETE"]
        return runs if len(done) >= n else None

    # middle: ACTOR_READY of first, then EXECUTION_COMPLETE of first (in order: it is stateful)
    runs = wait_for(lambda: events_of(middle["id"], 2), what="events on the middle actor")
    logs = [srv.logs(middle["id"], e["id"]) for e in runs]
    assert "'event_type': 'ACTOR_READY'" in logs[0]
    complete = [log for log in logs if "'event_type': 'EXECUTION_COMPLETE'" in log]
    assert complete and f"'execution_id': '{eid}'" in complete[0] and "event_time_utc" in complete[0]
    detail = result(srv.get(f"/actors/{middle['id']}/executions/{runs[0]['id']}"))
    assert detail["executor"] == "Abaco Event"
    # the middle actor's own completions travel one link further
    runs = wait_for(lambda: events_of(last["id"], 2), what="events on the last actor")
    tail_logs = " ".join(srv.logs(last["id"], e["id"]) for e in runs)
    assert "'event_type': 'EXECUTION_COMPLETE'" in tail_logs and f"'actor_id': '{middle['id']}'" in tail_logs
    # closing the loop is refused
    r = srv.put(f"/actors/{last['id']}", json={"image": "abacosamples/test", "stateless": False,
                                               "link": first["id"]})
    assert r.status_code == 400 and "this update would result in a cycle of linked actors" in r.json()["message"]
    r = srv.put(f"/actors/{last['id']}", json={"image": "abacosamples/test", "stateless": False,
                                               "link": last["id"]})
    assert r.status_code == 400 and "An actor cannot link to itself" in r.json()["message"]


class _Receiver(BaseHTTPRequestHandler):
    received: list = []
    failures_left = 0

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).failures_left:
            type(self).failures_left -= 1
            self.send_response(500)
            self.end_headers()
            return
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_reaches_a_local_receiver_despite_a_failure(live_server):
    _Receiver.received = []
    _Receiver.failures_left = 1  # the first POST fails: delivered on the retry (2 s backoff)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_port}/events"
        actor = live_server.register("abacosamples/test", webhook=url)
        eid = live_server.send(actor["id"], "hi")
        live_server.wait_execution(actor["id"], eid)
        got = wait_for(lambda: len(_Receiver.received) >= 2 and _Receiver.received, timeout=30,
                       what="two webhook deliveries")
    finally:
        receiver.shutdown()
    kinds = sorted(e["event_type"] for e in got)
    assert kinds == ["ACTOR_READY", "EXECUTION_COMPLETE"]
    done = next(e for e in got if e["event_type"] == "EXECUTION_COMPLETE")
    assert done["execution_id"] == eid and done["actor_id"] == actor["id"] and done["_abaco_webhook"] == url


def test_webhook_to_another_actor_with_a_nonce(live_server):
    """Abaco's test_events: a webhook URL pointing at an actor's messages with ?x-nonce=."""
    srv = live_server
    target = srv.register("abacosamples/test")
    nonce = result(srv.post(f"/actors/{target['id']}/nonces"))["id"]
    hook = f"{srv.url}/actors/{target['id']}/messages?x-nonce={nonce}"
    srv.register("abacosamples/test", webhook=hook)
    [ex] = wait_for(lambda: executions(srv, target["id"]), timeout=35, what="the webhook execution")
    srv.wait_execution(target["id"], ex["id"])
    logs = srv.logs(target["id"], ex["id"])
    assert "'event_type': 'ACTOR_READY'" in logs and "event_time_display" in logs


def test_pending_webhooks_survive_a_restart(server_factory):
    from tests.fixtures.server import free_port

    port = free_port()  # nothing listens here yet: the first deliveries fail
    srv = server_factory(cron_tick_s=1, webhook_allowed_hosts=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/late"
    actor = srv.register("abacosamples/test", webhook=url)
    srv.send(actor["id"], "while the receiver is down")
    time.sleep(1.0)  # at least one failed attempt, then back off
    srv.stop()
    _Receiver.received = []
    _Receiver.failures_left = 0
    receiver = ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        srv.start()
        got = wait_for(lambda: len(_Receiver.received) >= 2 and _Receiver.received, timeout=40,
                       what="the deliveries left pending before the restart")
    finally:
        receiver.shutdown()
    assert sorted(e["event_type"] for e in got)[:2] == ["ACTOR_READY", "EXECUTION_COMPLETE"]
