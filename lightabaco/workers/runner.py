"""One claimed message → one sandbox execution → one recorded execution (spec §4.5).

The claim, the RUNNING mark and the worker's BUSY status are one transaction; the log, the final
execution record, the acknowledgement and the worker's READY status are another. Between them the
message stays leased (renewed while the sandbox runs), so a worker that dies mid-run loses its lease
and the message runs again under the same execution id.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lightabaco.abaco import result_quota, signals
from lightabaco.abaco.actors import mem_bytes
from lightabaco.abaco.environment import build_env
from lightabaco.abaco.messages import BINARY
from lightabaco.abaco.network import exec_network
from lightabaco.protocol.serialize import display_time
from lightabaco.sandbox.types import ExecResult, ExecSpec, Limits, PreparedImage
from lightabaco.store import fast, mailbox
from lightabaco.store.db import database, write_tx
from lightabaco.store.mailbox import Claimed
from lightabaco.store.models import Actor, Execution, Log, Message, Worker

log = logging.getLogger(__name__)

TRUNCATION_MARKER = " LOG LIMIT EXCEEDED; this execution log was TRUNCATED!"
# Prefix of the line the service appends to a log when the platform ended or limited the execution.
PLATFORM_LINE_PREFIX = "[lightabaco] "
FORCE_QUIT_GRACE_S = 2.0
_ANY_WAITING_SQL = 'SELECT 1 FROM "message" WHERE "actor_dbid" = ? AND "lease_owner" IS NULL LIMIT 1'
# Acknowledge: delete the message, but only while this worker still holds its lease.
_ACK_SQL = 'DELETE FROM "message" WHERE "id" = ? AND "lease_owner" = ?'


def claim_next(worker_id: str, actor_dbid: str, revision: int, lease_s: float,
               log_dir: Path) -> tuple[Claimed, Actor] | None:
    """Lease the actor's next message and mark its execution RUNNING, atomically.

    Returns None when there is nothing to do, or when this worker must not take messages any more
    (its actor is gone, in another revision, or being deleted); the caller checks `should_stop`.
    """
    # A read first: idle workers woken together must not all queue for the write lock for nothing.
    if database.execute_sql(fast.placeholders(_ANY_WAITING_SQL), (actor_dbid,)).fetchone() is None:
        return None
    now = time.time()
    with write_tx():
        actor = fast.get_one(Actor, "dbid", actor_dbid)
        # An actor in ERROR runs nothing until it is fixed (a PUT): its messages wait, as in Abaco.
        if actor is None or actor.revision != revision or actor.status in ("SHUTTING_DOWN", "ERROR"):
            return None
        claimed = mailbox.claim(actor_dbid, worker_id, lease_s, now)
        if claimed is None:
            return None
        log_path = log_dir / f"{claimed.execution_id}.log"
        fast.update(Execution, {"dbid": f"{actor_dbid}_{claimed.execution_id}"}, status="RUNNING",
                    worker_id=worker_id, start_time=now, attempts=claimed.attempts,
                    live_log_path=str(log_path))
        # Conditional status changes never overwrite a SHUTDOWN_REQUESTED set by the API meanwhile.
        fast.update(Worker, {"id": worker_id, "status": "READY"}, status="BUSY")
    return claimed, actor


def limits_for(settings: Any, actor: Actor) -> Limits:
    run_time = actor.max_run_time if actor.max_run_time else settings.default_max_run_time
    cpus = (actor.max_cpus / 1e9) if actor.max_cpus else (settings.max_cpus or None)
    return Limits(wall_timeout_s=run_time if run_time and run_time > 0 else None,
                  memory_bytes=mem_bytes(actor.mem_limit or settings.mem_limit or None),
                  max_cpus=cpus, log_bytes=settings.max_log_bytes)


def read_log(path: Path, cap: int, truncated: bool) -> tuple[str, bool]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(cap + 1)
    except OSError:
        return "", False
    if len(data) > cap:
        data, truncated = data[:cap], True
    text = data.decode("utf-8", "replace")
    if truncated:
        text += TRUNCATION_MARKER
    return text, truncated


def stop_reason(result: ExecResult) -> str:
    """The sandbox's sentence when the platform ended or limited the execution, else "".

    A plain exit ("exited with status 3") is the actor's own doing and stays out, as in Docker's
    State.Error; a limit (time, memory, processes), a force quit or a setup failure is not something
    the actor's own output can explain, so the user must be told.
    """
    if result.failure or result.timed_out or result.killed:
        return result.reason
    if result.exit_code not in (None, 0) and result.reason != f"exited with status {result.exit_code}":
        return result.reason
    return ""


def with_reason_line(text: str, reason: str) -> str:
    """The log as stored: the actor's output, then one line saying why the platform stopped it."""
    if not reason:
        return text
    sep = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{sep}{PLATFORM_LINE_PREFIX}{reason}\n"


def final_state(result: ExecResult | None, exit_code: Any, error: str) -> dict[str, Any]:
    """Docker's State object, as Abaco shows it (spec §14)."""
    return {"Status": "exited", "Running": False, "Paused": False, "Restarting": False,
            "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": exit_code, "Error": error,
            "StartedAt": display_time(result.start_time if result else None),
            "FinishedAt": display_time(result.end_time if result else None)}


class Runner:
    """Runs claimed messages for one worker process."""

    def __init__(self, services: Any, worker_id: str, image: PreparedImage, bell: Any,
                 log_dir: Path) -> None:
        self.services = services
        self.settings = services.settings
        self.worker_id = worker_id
        self.image = image
        self.bell = bell
        self.log_dir = log_dir
        self.stop_requested = False  # set when a "stop" ring arrives mid-execution

    # -- one execution -------------------------------------------------------------------------

    def execute(self, claimed: Claimed, actor: Actor) -> None:
        exec_dbid = f"{actor.dbid}_{claimed.execution_id}"
        if claimed.attempts > self.settings.max_attempts:
            self.finish_error(claimed, actor, f"The message was delivered {claimed.attempts - 1} times "
                              "without its execution finishing (worker crashes?); giving up.")
            return
        tally = result_quota.Tally(result_quota.owner_key(actor.tenant, actor.owner))
        if claimed.attempts > 1:  # a re-run: results of the interrupted run would be duplicates
            result_quota.discard(exec_dbid, tally.owner)
        env = build_env(self.services, actor, claimed.env, claimed.body, claimed.content_type,
                        self.worker_id)
        log_path = self.log_dir / f"{claimed.execution_id}.log"

        def on_result(data: bytes) -> None:
            # Within the per-execution and per-owner quotas, or dropped (and counted in the tally).
            if result_quota.store(self.services, exec_dbid, tally, data):
                self.services.notifier.execution_event(exec_dbid)

        # A re-run (at-least-once after a crash) gets its own sandbox id: the interrupted run's scratch
        # may still exist. The execution id the actor sees ($_abaco_execution_id) stays the same.
        sandbox_id = claimed.execution_id if claimed.attempts == 1 else \
            f"{claimed.execution_id}-{claimed.attempts}"
        spec = ExecSpec(image=self.image, execution_id=sandbox_id, env=env,
                        binary_message=claimed.body if claimed.content_type == BINARY else None,
                        use_image_user=actor.use_container_uid,
                        **exec_network(self.settings, actor, env),
                        limits=limits_for(self.settings, actor), on_result=on_result,
                        log_path=log_path)
        try:
            execution = self.services.backend.start(spec)
        except Exception as exc:  # the platform could not start it: retry later, then give up
            log.exception("could not start execution %s", claimed.execution_id)
            self.requeue_or_fail(claimed, actor, f"The sandbox could not be started: {exc}")
            raise StartFailure(str(exc)) from exc
        result = self.supervise(execution, claimed, exec_dbid)
        if result.failure == "setup" and claimed.attempts < self.settings.max_attempts:
            # The platform failed (e.g. the kernel refused a namespace under load), not the actor:
            # give the message back and let it run again shortly, under the same execution id.
            log.warning("execution %s could not be set up (%s); retrying", claimed.execution_id,
                        result.reason)
            self.requeue_or_fail(claimed, actor, result.reason)
            time.sleep(min(0.1 * claimed.attempts, 1.0))
            return
        # What on_result did not take (a backend without callbacks, or an insert that failed).
        if result.results:
            for data in result.results:
                result_quota.store(self.services, exec_dbid, tally, data)
        self.finish(claimed, actor, result, log_path, tally)

    def supervise(self, execution: Any, claimed: Claimed, exec_dbid: str) -> ExecResult:
        lease_every = max(self.settings.lease_s / 3.0, 0.5)
        last_renew = last_check = last_push = time.monotonic()
        push_every = self.settings.live_log_push_s
        pushed_size = -1
        killed = False
        while True:
            result = execution.wait(0.25)
            if result is not None:
                return result
            if push_every > 0 and time.monotonic() - last_push >= push_every:
                last_push = time.monotonic()
                pushed_size = self.push_live_log(claimed, exec_dbid, pushed_size)
            rings = self.bell.drain()
            if b"stop" in rings:
                self.stop_requested = True  # finish this execution first, then exit
            now = time.monotonic()
            if not killed and (b"kill" in rings or now - last_check >= 1.0):
                last_check = now
                row = Execution.select(Execution.force_quit).where(Execution.dbid == exec_dbid).first()
                if row is None or row.force_quit:
                    execution.kill(grace_s=FORCE_QUIT_GRACE_S)
                    killed = True
            if now - last_renew >= lease_every:
                last_renew = now
                if not mailbox.renew(claimed.id, self.worker_id, self.settings.lease_s):
                    log.warning("lease on message %s was lost while running", claimed.id)

    def push_live_log(self, claimed: Claimed, exec_dbid: str, pushed_size: int) -> int:
        """Copy the running execution's log into the database when it grew, so that the API reads it
        wherever the execution runs (worker hosts). Returns the size copied."""
        path = self.log_dir / f"{claimed.execution_id}.log"
        try:
            size = path.stat().st_size
        except OSError:
            return pushed_size
        if size == pushed_size:
            return pushed_size
        text, _ = read_log(path, self.settings.max_log_bytes, False)
        actor_dbid = exec_dbid[: -len(claimed.execution_id) - 1]
        try:
            Log.insert(execution_dbid=exec_dbid, actor_dbid=actor_dbid, text=text, truncated=False,
                       expires=None).on_conflict(conflict_target=[Log.execution_dbid],
                                                 update={Log.text: text}).execute()
        except Exception as exc:  # a busy database delays the copy; the final log is written anyway
            log.debug("live log of %s not copied: %s", exec_dbid, exc)
            return pushed_size
        return size

    # -- recording -----------------------------------------------------------------------------

    def finish(self, claimed: Claimed, actor: Actor, result: ExecResult, log_path: Path,
               tally: result_quota.Tally | None = None) -> None:
        text, truncated = read_log(result.log_path or log_path, self.settings.max_log_bytes,
                                   result.log_truncated)
        now = time.time()
        log_ex = actor.log_ex if actor.log_ex is not None else self.settings.log_ex
        expires = now + log_ex if log_ex and log_ex > 0 else None
        platform_failure = result.failure == "setup"
        exit_code: Any = result.exit_code
        if exit_code is None:
            exit_code = 127 if result.failure == "exec" else "undetermined"
        error = stop_reason(result)
        # Users read logs first: the reason also goes there, after the truncation marker if any.
        text = with_reason_line(text, error)
        state = final_state(result, exit_code, error)
        quota_note = tally.note() if tally is not None else ""
        if quota_note:  # results were dropped: the record and the log both say so
            state["ResultsQuota"] = quota_note
            text = with_reason_line(text, quota_note)
        exec_dbid = f"{actor.dbid}_{claimed.execution_id}"
        with write_tx():
            # A re-run replaces the log of the interrupted run; the final log replaces live copies.
            Log.delete().where(Log.execution_dbid == exec_dbid).execute()
            fast.insert(Log, execution_dbid=exec_dbid, actor_dbid=actor.dbid, text=text,
                        truncated=truncated, expires=expires)
            fast.update(
                Execution, {"dbid": exec_dbid},
                status="ERROR" if platform_failure else "COMPLETE",
                status_message=result.reason if platform_failure else "",
                start_time=result.start_time or now, finish_time=result.end_time or now,
                runtime=int(max(result.wall_s, 0)), cpu=int(max(result.cpu_ns, 0)),
                io=int(max(result.io_bytes, 0)), exit_code=exit_code,
                final_state=state, live_log_path=None)
            database.execute_sql(fast.placeholders(_ACK_SQL), (claimed.id, self.worker_id))
            fast.update(Worker, {"id": self.worker_id, "status": "BUSY"}, status="READY")
            fast.update(Worker, {"id": self.worker_id}, last_execution_time=now)
        self.services.notifier.execution_event(exec_dbid)
        try:
            Path(log_path).unlink(missing_ok=True)
        except OSError:
            pass
        signals.emit(self.services, actor, signals.EXECUTION_COMPLETE, execution_id=claimed.execution_id,
                   status="ERROR" if platform_failure else "COMPLETE", exit_code=exit_code)

    def finish_error(self, claimed: Claimed, actor: Actor, reason: str) -> None:
        exec_dbid = f"{actor.dbid}_{claimed.execution_id}"
        now = time.time()
        with write_tx():
            Execution.update(status="ERROR", status_message=reason, finish_time=now, live_log_path=None,
                             final_state=final_state(None, "undetermined", reason),
                             exit_code="undetermined").where(Execution.dbid == exec_dbid).execute()
            Message.delete().where(Message.id == claimed.id).execute()
            fast.update(Worker, {"id": self.worker_id, "status": "BUSY"}, status="READY")
        self.services.notifier.execution_event(exec_dbid)

    def requeue_or_fail(self, claimed: Claimed, actor: Actor, reason: str) -> None:
        if claimed.attempts >= self.settings.max_attempts:
            self.finish_error(claimed, actor, reason)
            return
        exec_dbid = f"{actor.dbid}_{claimed.execution_id}"
        with write_tx():
            Execution.update(status="SUBMITTED", live_log_path=None).where(
                Execution.dbid == exec_dbid).execute()
            mailbox.nack(claimed.id, self.worker_id, count_attempt=True)
            fast.update(Worker, {"id": self.worker_id, "status": "BUSY"}, status="READY")


class StartFailure(Exception):
    """The sandbox could not be started for one message (the message was requeued or failed)."""
