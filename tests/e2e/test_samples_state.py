"""lightabaco.actor.update_state from inside a real execution, against a real server: a stateful actor
counts its messages in its state (needs `token: true` for the injected token and network access to the API)."""

from __future__ import annotations

import shutil
import time

import pytest

from lightabaco.build.builder import build
from tests.fixtures.samples import reachable_tmpdir

pytestmark = pytest.mark.e2e

COUNTER = '''
import ast
from lightabaco.actor import get_context, update_state

ctx = get_context()
state = ast.literal_eval(ctx["state"] or "{}") or {}
state = {"count": state.get("count", 0) + 1, "last": ctx["raw_message"]}
print("new state", state, update_state(state))
'''


@pytest.fixture
def counter_server(sample_images):
    from tests.fixtures.server import LiveServer, free_port, make_home

    context = reachable_tmpdir("lightabaco-counter-ctx-")
    (context / "Containerfile").write_text('FROM lightabaco/python\nCOPY counter.py /counter.py\n'
                                           'CMD ["python3", "/counter.py"]\n')
    (context / "counter.py").write_text(COUNTER)
    build(context, sample_images.store, cache_dir=sample_images.build_cache, tag="lightabaco/test-counter",
          network="none")
    shutil.rmtree(context, ignore_errors=True)
    home = make_home("lab-counter-home-")
    sample_images.install(home)
    server = LiveServer(home=home, port=free_port(), settings={"network": "host"})
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_update_state_from_inside_the_sandbox(counter_server):
    actor = counter_server.register("lightabaco/test-counter", stateless=False, token=True)
    for message in ("first", "second"):
        eid = counter_server.send(actor["id"], message)
        execution = counter_server.wait_execution(actor["id"], eid, ("COMPLETE", "ERROR"))
        assert execution["exit_code"] == 0, counter_server.logs(actor["id"], eid)
    deadline = time.monotonic() + 10
    while True:
        state = counter_server.get(f"/actors/{actor['id']}/state").json()["result"]
        state = state.get("state", state) if isinstance(state, dict) else state
        if state == {"count": 2, "last": "second"} or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert state == {"count": 2, "last": "second"}
