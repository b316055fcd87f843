"""Issue 8 items 2 and 10 end to end, through a live server with real bubblewrap sandboxes.

Item 2: a user holding only EXECUTE (or an EXECUTE nonce) on another user's actor tries to load their
own code into it (`PYTHONPATH=/_abaco_binary_data` with a zip holding sitecustomize.py, `LD_PRELOAD`)
while the actor holds the owner's secret config and token: the message is refused with 400 and never
runs; the owner's allow-list lets exactly the named variable through; the platform's variables are
never overridden.

Item 10: hostile actors flood the results socket with big and with empty datagrams, and a user floods
the queue: results stop at the per-execution and per-owner quotas (the execution's record and log say
so) and the queue answers 429 past its cap, while the server keeps answering.
"""

from __future__ import annotations

import io
import shutil
import struct
import time
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.fixtures.server import LiveServer, free_port, import_test_images, make_home

pytestmark = pytest.mark.e2e

BIG_FLOOD = "secmsg/big-flood"  # 40 datagrams of 100,000 bytes
EMPTY_FLOOD = "secmsg/empty-flood"  # 20,000 empty datagrams
SETTINGS = {
    "workers": 4, "sync_timeout_s": 10,
    "results_max_count_per_execution": 50, "results_max_bytes_per_execution": 1_000_000,
    "results_max_count_per_user": 80, "results_max_bytes_per_user": 1_500_000,
    "max_queued_messages_per_user": 5,
}


def flood_elf(count: int, size: int) -> bytes:
    """A static x86-64 program (no libc) that connects to /_abaco_results.sock and sends `count`
    datagrams of `size` zero bytes (from its zero-filled bss), then exits 0."""
    base, bss = 0x400000, 0x20000
    buf = base + 0x1000
    path = b"/_abaco_results.sock\0"
    code = bytearray()
    code += b"\xb8" + struct.pack("<I", 41) + b"\xbf\x01\0\0\0" + b"\xbe\x02\0\0\0" + b"\x31\xd2\x0f\x05"
    code += b"\x49\x89\xc4"  # mov r12, rax (the socket)
    addr_at = len(code) + 4  # patched below: mov esi, &sockaddr
    code += b"\x4c\x89\xe7" + b"\xbe\0\0\0\0" + b"\xba" + struct.pack("<I", 2 + len(path))
    code += b"\xb8" + struct.pack("<I", 42) + b"\x0f\x05"  # connect
    code += b"\x41\xbd" + struct.pack("<I", count)  # mov r13d, count
    loop = len(code)
    code += b"\x4c\x89\xe7" + b"\xbe" + struct.pack("<I", buf) + b"\xba" + struct.pack("<I", size)
    code += b"\x45\x31\xd2\x45\x31\xc0\x45\x31\xc9" + b"\xb8" + struct.pack("<I", 44) + b"\x0f\x05"  # sendto
    code += b"\x41\xff\xcd"  # dec r13d
    code += b"\x75" + struct.pack("<b", loop - (len(code) + 2))  # jnz loop
    code += b"\xb8" + struct.pack("<I", 60) + b"\x31\xff\x0f\x05"  # exit(0)
    hdr = 64 + 56
    sockaddr = base + hdr + len(code)
    code[addr_at:addr_at + 4] = struct.pack("<I", sockaddr)
    code += struct.pack("<H", 1) + path
    filesz = hdr + len(code)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + b"\0" * 9, 2, 0x3E, 1, base + hdr, 64,
                       0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, base, base, filesz, 0x1000 + bss, 0x1000)
    return ehdr + phdr + bytes(code)


def import_flood_images(home: Path, layouts: Path) -> None:
    from lightabaco.images import ImageStore
    from tests.fixtures.oci import OciLayoutWriter, dir, file, host_arch

    if host_arch() != "amd64":
        pytest.skip("the flooding actor is an x86-64 program")
    store = ImageStore(home / "images")
    for tag, (count, size) in {BIG_FLOOD: (40, 100_000), EMPTY_FLOOD: (20_000, 0)}.items():
        w = OciLayoutWriter()
        w.add_layer([file("actor", flood_elf(count, size), mode=0o755), dir("proc"), dir("dev"),
                     dir("tmp", 0o1777), file("_abaco_binary_data"), file("_abaco_results.sock")])
        w.finish({"Entrypoint": ["/actor"], "Env": ["PATH=/"], "WorkingDir": "/"})
        dest = layouts / tag.replace("/", "_")
        if not dest.exists():
            w.write_layout(dest)
        store.import_path(dest, tag=tag)


@pytest.fixture(scope="module")
def server(test_image_layouts: Path) -> Iterator[LiveServer]:
    home = make_home("lab-secmsg-")
    import_test_images(home, test_image_layouts)
    import_flood_images(home, test_image_layouts)
    srv = LiveServer(home=home, port=free_port(), settings=SETTINGS)
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(home, ignore_errors=True)


def add_user(server: LiveServer, name: str) -> dict[str, str]:
    r = server.post("/actors/admin/users", json={"username": name, "role": "user"})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['result']['token']}"}


def call(server: LiveServer, method: str, path: str, headers: dict[str, str] | None, **kw) -> requests.Response:
    return requests.request(method, server.url + path, headers=headers or {}, timeout=60, **kw)


def ok(r: requests.Response):
    assert r.status_code == 200, r.text
    return r.json()["result"]


def wait_done(server: LiveServer, aid: str, eid: str, h: dict[str, str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        ex = ok(call(server, "GET", f"/actors/{aid}/executions/{eid}", h))
        if ex["status"] in ("COMPLETE", "ERROR"):
            return ex
        assert time.monotonic() < deadline, f"{eid} still {ex['status']}\n{server.log_tail()}"
        time.sleep(0.1)


def sitecustomize_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("sitecustomize.py", "import os\nprint('PWNED', os.environ.get('_actor_configs'), "
                                       "os.environ.get('_abaco_access_token'))\n")
    return out.getvalue()


# -- item 2 -------------------------------------------------------------------------------------------


def test_execute_permission_or_nonce_cannot_take_over_the_owners_actor(server):
    owner, mallory = add_user(server, "sm-owner"), add_user(server, "sm-mallory")
    actor = ok(call(server, "POST", "/actors", owner, json={"image": "abacosamples/test", "token": True}))
    aid = actor["id"]
    server.wait_actor(aid, "READY")
    ok(call(server, "POST", "/actors/configs", owner,
            json={"name": "sm-secret", "value": "hunter2", "actors": aid, "is_secret": True}))
    ok(call(server, "POST", f"/actors/{aid}/permissions", owner, data={"user": "sm-mallory", "level": "EXECUTE"}))
    nonce = ok(call(server, "POST", f"/actors/{aid}/nonces", owner, data={"level": "EXECUTE"}))["id"]
    payload = sitecustomize_zip()
    attacks = [
        ({"PYTHONPATH": "/_abaco_binary_data"}, "PYTHONPATH"),
        ({"LD_PRELOAD": "/_abaco_binary_data"}, "LD_PRELOAD"),
        ({"PYTHONPATH": "/_abaco_binary_data", "_abaco_access_token": "x"}, "_abaco_access_token"),
    ]
    for params, named in attacks:
        for who, extra in (("mallory", {}), ("nonce", {"x-nonce": nonce})):
            auth = mallory if who == "mallory" else {}
            r = requests.post(server.url + f"/actors/{aid}/messages", params={**params, **extra}, data=payload,
                              headers={**auth, "Content-Type": "application/octet-stream"}, timeout=60)
            assert r.status_code == 400, (who, params, r.text)
            body = r.json()
            assert body["status"] == "error" and named in body["message"] and "message_env_allow" in body["message"]
    time.sleep(1.5)  # had anything been queued, a READY worker would have picked it up by now
    summary = ok(call(server, "GET", f"/actors/{aid}/executions", owner))
    assert summary["total_executions"] == 0, summary
    assert ok(call(server, "GET", f"/actors/{aid}/messages", owner))["messages"] == 0

    # The owner allows PYTHONPATH (and, pointlessly, the token's name): now the message runs, with the
    # variable the owner allowed and the platform's own token and API server.
    ok(call(server, "PUT", f"/actors/{aid}", owner,
            json={"image": "abacosamples/test", "token": True,
                  "message_env_allow": ["PYTHONPATH", "_abaco_access_token", "_abaco_api_server"]}))
    server.wait_actor(aid, "READY")
    r = requests.post(server.url + f"/actors/{aid}/messages",
                      params={"PYTHONPATH": "/_abaco_binary_data", "_abaco_access_token": "forged-token",
                              "_abaco_api_server": "http://evil.invalid", "x-nonce": nonce},
                      data={"message": "allowed"}, timeout=60)
    eid = ok(r)["execution_id"]
    assert wait_done(server, aid, eid, owner)["status"] == "COMPLETE"
    logs = ok(call(server, "GET", f"/actors/{aid}/executions/{eid}/logs", owner))["logs"]
    assert "PYTHONPATH=/_abaco_binary_data" in logs
    assert "forged-token" not in logs and "evil.invalid" not in logs
    token_line = [line for line in logs.splitlines() if line.startswith("_abaco_access_token=")]
    assert token_line and len(token_line[0]) > len("_abaco_access_token=") + 20, logs
    # Not allowed: still refused.
    r = call(server, "POST", f"/actors/{aid}/messages", mallory, params={"LD_PRELOAD": "/x"},
             data={"message": "x"})
    assert r.status_code == 400 and "LD_PRELOAD" in r.json()["message"]


# -- item 10 ------------------------------------------------------------------------------------------


def drain_results(server: LiveServer, aid: str, eid: str, h: dict[str, str]) -> list[bytes]:
    got = []
    while True:
        r = call(server, "GET", f"/actors/{aid}/executions/{eid}/results", h)
        assert r.status_code == 200, r.text
        if not r.content:
            # An empty result and "no result" look alike over HTTP; the empty flood is counted by the
            # quota note and the record instead.
            return got
        got.append(r.content)


def test_hostile_actor_flooding_big_results_stops_at_the_quotas(server):
    h = add_user(server, "sm-big")
    aid = ok(call(server, "POST", "/actors", h, json={"image": BIG_FLOOD}))["id"]
    server.wait_actor(aid, "READY")
    first = ok(call(server, "POST", f"/actors/{aid}/messages", h, data={"message": "go"}))["execution_id"]
    ex = wait_done(server, aid, first, h)
    note = ex["final_state"].get("ResultsQuota", "")
    # 40 x 100,000 bytes against 1,000,000 bytes per execution: 10 kept, 30 dropped.
    assert "results_max_bytes_per_execution" in note and "30 result(s) (3000000 bytes)" in note, ex
    logs = ok(call(server, "GET", f"/actors/{aid}/executions/{first}/logs", h))["logs"]
    assert "[lightabaco] results quota reached" in logs
    # A second execution meets the owner's 1,500,000-byte cap after 5 more.
    second = ok(call(server, "POST", f"/actors/{aid}/messages", h, data={"message": "go"}))["execution_id"]
    ex2 = wait_done(server, aid, second, h)
    assert "results_max_bytes_per_user" in ex2["final_state"]["ResultsQuota"], ex2
    assert len(drain_results(server, aid, second, h)) == 5
    assert [len(d) for d in drain_results(server, aid, first, h)] == [100_000] * 10
    # Reading them gave the room back: the next execution stores its 10 again.
    third = ok(call(server, "POST", f"/actors/{aid}/messages", h, data={"message": "go"}))["execution_id"]
    wait_done(server, aid, third, h)
    assert len(drain_results(server, aid, third, h)) == 10


def test_hostile_actor_flooding_empty_datagrams_is_counted(server):
    h = add_user(server, "sm-empty")
    aid = ok(call(server, "POST", "/actors", h, json={"image": EMPTY_FLOOD}))["id"]
    server.wait_actor(aid, "READY")
    first = ok(call(server, "POST", f"/actors/{aid}/messages", h, data={"message": "go"}))["execution_id"]
    note = wait_done(server, aid, first, h)["final_state"].get("ResultsQuota", "")
    assert "results_max_count_per_execution" in note and "19950 result(s) (0 bytes)" in note, note
    second = ok(call(server, "POST", f"/actors/{aid}/messages", h, data={"message": "go"}))["execution_id"]
    note2 = wait_done(server, aid, second, h)["final_state"]["ResultsQuota"]
    assert "results_max_count_per_user" in note2 and "19970 result(s)" in note2, note2  # 80 - 50 = 30 kept
    # Meanwhile the API answered other users at once.
    t0 = time.monotonic()
    ok(call(server, "GET", "/actors", h))
    assert time.monotonic() - t0 < 2.0


def test_queue_flood_answers_429_with_the_cap(server):
    h = add_user(server, "sm-queue")
    aid = ok(call(server, "POST", "/actors", h, json={"image": "lightabaco/sleep"}))["id"]
    server.wait_actor(aid, "READY")
    accepted, refused = [], []
    for i in range(12):
        r = call(server, "POST", f"/actors/{aid}/messages", h, params={"ITERATIONS": "10", "SLEEP": "1"},
                 data={"message": f"m{i}"})
        (accepted if r.status_code == 200 else refused).append(r)
    assert len(accepted) == 5, [r.text for r in refused]
    assert all(r.status_code == 429 for r in refused)
    msg = refused[0].json()
    assert msg["status"] == "error" and "5 messages queued or running" in msg["message"]
    assert "max_queued_messages_per_user" in msg["message"]
    # Another user is not held back by this backlog.
    other = add_user(server, "sm-queue-other")
    other_aid = ok(call(server, "POST", "/actors", other, json={"image": "abacosamples/test"}))["id"]
    server.wait_actor(other_aid, "READY")
    ok(call(server, "POST", f"/actors/{other_aid}/messages", other, data={"message": "x"}))
    # Purging the queue makes room again.
    ok(call(server, "DELETE", f"/actors/{aid}/messages", h))
    deadline = time.monotonic() + 30
    while True:
        r = call(server, "POST", f"/actors/{aid}/messages", h, data={"message": "again"})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # the running one finishes its current sleep first
    assert r.status_code == 200, r.text
    call(server, "DELETE", f"/actors/{aid}", h)
