"""The worker's execution path (claim → run → record → ack) and start-up recovery, with a fake
sandbox backend."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lightabaco.abaco import actors, messages
from lightabaco.abaco.doorbell import Doorbell
from lightabaco.sandbox.types import ExecResult, ExecSpec
from lightabaco.store import mailbox
from lightabaco.store.models import Actor, Execution, Log, Message, Result, Worker
from lightabaco.workers import runner as runner_mod
from lightabaco.workers.runner import Runner, claim_next
from lightabaco.workers.supervisor import recover_leases, recover_on_start


class FakeExecution:
    def __init__(self, spec: ExecSpec, output: bytes, results: list[bytes], hang: bool,
                 failure: str | None) -> None:
        self.id = spec.execution_id
        self.spec = spec
        self.done = threading.Event()
        self.killed = False
        self.failure = failure
        spec.log_path.write_bytes(output)
        for r in results:
            spec.on_result(r)
        self.started = time.time()
        if not hang:
            self.done.set()

    def _result(self) -> ExecResult:
        code = 137 if self.killed else (None if self.failure else 0)
        return ExecResult(self.id, code, 9 if self.killed else None, False, self.killed, self.failure,
                          "setup failed" if self.failure else "exited", self.spec.log_path, False, [], 0,
                          1234, {"rchar": 10, "wchar": 5}, 0, 0.01, self.started, time.time(), "fake")

    def wait(self, timeout: float | None = None) -> ExecResult | None:
        return self._result() if self.done.wait(timeout) else None

    def poll(self) -> ExecResult | None:
        return self._result() if self.done.is_set() else None

    def kill(self, grace_s: float = 0.0) -> None:
        self.killed = True
        self.done.set()


class FakeBackend:
    def __init__(self, output: bytes = b"hello\n", results: list[bytes] | None = None,
                 hang: bool = False, failure: str | None = None) -> None:
        self.kw = dict(output=output, results=results or [], hang=hang, failure=failure)
        self.specs: list[ExecSpec] = []
        self.last: FakeExecution | None = None

    def start(self, spec: ExecSpec) -> FakeExecution:
        self.specs.append(spec)
        self.last = FakeExecution(spec, **self.kw)
        return self.last


def setup_actor(env, **fields):
    s, admin = env.services, env.admin()
    a = actors.create_actor(s, admin, {"image": "img", **fields})
    row = Actor.get()
    worker = Worker.get()
    worker.status = "READY"
    worker.save()
    return s, admin, a, row, worker


def make_runner(env, worker, backend) -> Runner:
    env.services._backend = backend
    bell = Doorbell(env.home, f"w-{worker.id}")
    log_dir = env.home / "logs"
    log_dir.mkdir(exist_ok=True)
    return Runner(env.services, worker.id, image=None, bell=bell, log_dir=log_dir)


def test_claim_run_record_ack(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    sent = messages.send_message(s, admin, a["id"], "hi", messages.STR, {"Q": "1"})
    backend = FakeBackend(results=[b"r1", b"r2"])
    runner = make_runner(service_env, worker, backend)
    claimed, actor = claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir)
    ex = Execution.get()
    assert ex.status == "RUNNING" and ex.worker_id == worker.id and Worker.get().status == "BUSY"
    runner.execute(claimed, actor)
    spec = backend.specs[0]
    assert spec.env["MSG"] == "hi" and spec.env["Q"] == "1" and spec.binary_message is None
    ex = Execution.get()
    assert ex.status == "COMPLETE" and ex.exit_code == 0 and ex.cpu == 1234 and ex.io == 15
    assert ex.final_state["ExitCode"] == 0 and ex.live_log_path is None
    assert Log.get().text == "hello\n"
    assert [r.data for r in Result.select().order_by(Result.id)] == [b"r1", b"r2"]
    assert Message.select().count() == 0 and Worker.get().status == "READY"
    assert ("execution", sent.execution_dbid) in s.notifier.calls


def test_log_truncation_marker(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    s.settings.max_log_bytes = 100
    messages.send_message(s, admin, a["id"], "hi", messages.STR, {})
    runner = make_runner(service_env, worker, FakeBackend(output=b"x" * 500))
    runner.execute(*claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir))
    text = Log.get().text
    assert text == "x" * 100 + runner_mod.TRUNCATION_MARKER and Log.get().truncated


def test_force_quit_flag_kills_the_execution(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    messages.send_message(s, admin, a["id"], "hi", messages.STR, {})
    backend = FakeBackend(hang=True)
    runner = make_runner(service_env, worker, backend)
    claimed, actor = claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir)

    def quit_soon() -> None:
        time.sleep(0.3)
        Execution.update(force_quit=True).execute()
        runner.bell.sock.sendto(b"kill", runner.bell.sock.getsockname())

    threading.Thread(target=quit_soon).start()
    runner.execute(claimed, actor)
    assert backend.last.killed
    ex = Execution.get()
    assert ex.status == "COMPLETE" and ex.exit_code == 137


def test_setup_failure_is_retried_then_marked_error(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    s.settings.max_attempts = 2
    messages.send_message(s, admin, a["id"], "hi", messages.STR, {})
    runner = make_runner(service_env, worker, FakeBackend(failure="setup"))
    runner.execute(*claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir))
    assert Execution.get().status == "SUBMITTED" and Message.get().lease_owner is None
    runner.execute(*claim_next(worker.id, row.dbid, row.revision, 30, runner.log_dir))
    ex = Execution.get()
    assert ex.status == "ERROR" and ex.status_message == "setup failed"
    assert Message.select().count() == 0


def test_stale_revision_claims_nothing(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    messages.send_message(s, admin, a["id"], "hi", messages.STR, {})
    assert claim_next(worker.id, row.dbid, row.revision + 1, 30, Path("/tmp")) is None
    assert mailbox.count(row.dbid) == 1


def test_recovery_requeues_running_and_marks_orphans(service_env):
    s, admin, a, row, worker = setup_actor(service_env)
    first = messages.send_message(s, admin, a["id"], "one", messages.STR, {})
    messages.send_message(s, admin, a["id"], "two", messages.STR, {})
    claim_next(worker.id, row.dbid, row.revision, 30, Path("/tmp"))
    orphan = messages.send_message(s, admin, a["id"], "gone", messages.STR, {})
    Message.delete().where(Message.execution_id == orphan.execution_id).execute()
    Execution.update(status="RUNNING").where(Execution.id == orphan.execution_id).execute()
    info = recover_on_start(max_attempts=3)
    assert info == {"worker_rows": 1, "requeued": 1, "orphans": 1}
    assert Execution.get(Execution.id == first.execution_id).status == "SUBMITTED"
    gone = Execution.get(Execution.id == orphan.execution_id)
    assert gone.status == "ERROR" and "server stopped" in gone.status_message
    # A message delivered too often is given up with a reason instead of looping forever.
    recover_leases([(0, row.dbid, first.execution_id, 3)], 3, "Its worker process died")
    ex = Execution.get(Execution.id == first.execution_id)
    assert ex.status == "ERROR" and "delivered 3 times" in ex.status_message


def test_supervisor_without_a_backend_explains_instead_of_spawning(service_env):
    from lightabaco.workers.supervisor import Supervisor
    from lightabaco.workers.worker import EXIT_BACKEND

    class NoBackend:
        name = "bwrap"

        def require_usable(self) -> None:
            raise RuntimeError("bwrap: user namespaces are disabled")

    s, admin, a, row, worker = setup_actor(service_env)
    Worker.update(status="REQUESTED").execute()  # a slot still waiting for its image check
    s._backend = NoBackend()
    sup = Supervisor(s)

    class Dead:  # a pool process that found no backend and exited
        pid = 999999

        def poll(self) -> int:
            return EXIT_BACKEND

    sup.procs[0] = Dead()  # type: ignore[assignment]
    sup.reconcile()
    assert "user namespaces are disabled" in sup.backend_error
    assert sup.procs == {}, "a pool process was started although no backend works"
    assert Worker.get().status == "REQUESTED"
    actor = Actor.get()
    assert "No sandbox backend can run executions" in actor.status_message
    assert actor.status == "SUBMITTED"  # not the actor's fault
