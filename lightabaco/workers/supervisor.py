"""The worker supervisor: turns worker rows into OS processes and keeps them honest.

It runs as a thread of the server (or alone, `python -m lightabaco.server workers`). Each pass:
reap exited processes (their leases go back to the queue), start REQUESTED workers within the global
cap (evicting idle workers of quiet actors when the cap is reached), stop workers asked to stop,
autoscale stateless actors, and return expired leases. Passes run on every doorbell ring and at least
once a second.

Image pulls never occupy the `workers` slots that run executions: a REQUESTED worker whose image is not
in the store is first handed to a pull process (workers/puller.py) in a pool of its own, capped
globally (`pull_concurrency`) and per actor owner (`pull_concurrency_per_user`), and killed at the
pull deadline. Only when its image is local does the worker take an execution slot.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from lightabaco.abaco import image_tags
from lightabaco.abaco import workers as worker_records
from lightabaco.abaco.doorbell import Doorbell
from lightabaco.store import mailbox
from lightabaco.store.db import write_tx
from lightabaco.store.models import Actor, Execution, Message, Worker
from lightabaco.workers import lineage
from lightabaco.workers.notify import SUPERVISOR
from lightabaco.workers.worker import EXIT_BACKEND, EXIT_IMAGE, EXIT_NEED_PULL

log = logging.getLogger("lightabaco.supervisor")

STOP_GRACE_S = 30.0  # a worker asked to stop gets this long to finish its execution before SIGTERM
CRASH_WINDOW_S = 60.0
CRASH_LIMIT = 5  # worker crashes per actor within the window before the actor goes to ERROR
LEASE_CHECK_S = 2.0
TAG_CHECK_S = 5.0  # how often the local store's tags are compared with what actors run
PULL_GRACE_S = 15.0  # past the pull deadline (which the puller enforces itself), the process is killed


@dataclass
class PullJob:
    """A pull process working for one worker row."""

    proc: subprocess.Popen  # type: ignore[type-arg]
    actor_dbid: str
    owner: str  # tenant/username of the actor's owner: the per-user cap counts these
    image: str
    started: float


def recover_leases(rows: list[tuple[int, str, str, int]], max_attempts: int, reason: str) -> None:
    """Executions whose lease was returned: back to SUBMITTED (re-run, same id) or ERROR when the
    message has been delivered too often."""
    for _mid, actor_dbid, execution_id, attempts in rows:
        exec_dbid = f"{actor_dbid}_{execution_id}"
        if attempts >= max_attempts:
            with write_tx():
                Execution.update(status="ERROR", live_log_path=None, finish_time=time.time(),
                                 status_message=f"{reason}; the message was delivered {attempts} times "
                                 "and is not retried again.").where(Execution.dbid == exec_dbid).execute()
                Message.delete().where((Message.actor_dbid == actor_dbid)
                                       & (Message.execution_id == execution_id)).execute()
        else:
            Execution.update(status="SUBMITTED", live_log_path=None).where(
                (Execution.dbid == exec_dbid) & (Execution.status == "RUNNING")).execute()


def recover_on_start(max_attempts: int) -> dict[str, int]:
    """After a crash or restart no worker is alive: clean their rows, requeue what they held."""
    gone = Worker.delete().execute()
    rows = mailbox.release_all_except(set())
    recover_leases(rows, max_attempts, "The server stopped while this execution was running")
    # RUNNING executions whose message is no longer in the mailbox cannot be re-run: say so.
    queued = {(m.actor_dbid, m.execution_id) for m in Message.select(Message.actor_dbid,
                                                                      Message.execution_id)}
    orphans = 0
    for row in Execution.select(Execution.dbid, Execution.actor_dbid, Execution.id).where(
            Execution.status == "RUNNING"):
        if (row.actor_dbid, row.id) not in queued:
            orphans += Execution.update(
                status="ERROR", live_log_path=None, finish_time=time.time(),
                status_message="The server stopped while this execution was running and its message "
                "could not be recovered.").where(Execution.dbid == row.dbid).execute()
    return {"worker_rows": gone, "requeued": len(rows), "orphans": orphans}


class Supervisor:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.settings = services.settings
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pulls: dict[str, PullJob] = {}  # worker id -> the pull preparing its image
        self.stop_asked: dict[str, float] = {}
        self.crashes: dict[str, deque[float]] = defaultdict(deque)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_lease_check = 0.0
        self._last_tag_check = 0.0
        self.bell: Doorbell | None = None
        self.backend_error = ""  # set when no sandbox backend can run here: no worker is started
        self._drain_deadline: float | None = None  # set by drain(): finish running work, start none
        self._stop_rung: set[str] = set()
        self._drained = threading.Event()
        services.pool_size = self.settings.workers

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, recover: bool = True) -> None:
        if recover:
            info = recover_on_start(self.settings.max_attempts)
            log.info("recovery: %s", info)
        self.bell = Doorbell(self.settings.home, SUPERVISOR)
        self.ensure_initial_workers()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self.bell is not None:
            self.services.notifier.wake_supervisor()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for job in self.pulls.values():
            if job.proc.poll() is None:
                job.proc.kill()
        for job in self.pulls.values():
            job.proc.wait()
        self.pulls.clear()
        for wid, proc in list(self.procs.items()):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for wid in list(self.procs):
            self._reaped(wid, 0, restart=False)
        if self.bell is not None:
            self.bell.close()

    def drain(self, grace_s: float) -> bool:
        """Graceful stop (SIGTERM): start nothing more, let running executions finish for up to
        `grace_s`, then kill what still runs (its lease returns: the message runs after the next
        start). Done by the supervisor's own thread, the one the workers' death signal is tied to.
        Returns True when everything finished within the grace period."""
        self._drain_deadline = time.monotonic() + max(grace_s, 0.0)
        if self.bell is not None:
            self.services.notifier.wake_supervisor()
        if self._thread is None or not self._thread.is_alive():
            return True
        self._drained.wait(grace_s + 30.0)
        return not self.procs

    def _drain_pass(self) -> bool:
        """One pass of the drain; True once no worker process is left."""
        for wid, job in list(self.pulls.items()):
            if job.proc.poll() is None:
                job.proc.kill()
            job.proc.wait()
            self.pulls.pop(wid)
            Worker.delete().where(Worker.id == wid).execute()
        for wid, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                self._reaped(wid, code, restart=False)
            elif wid not in self._stop_rung:
                self._stop_rung.add(wid)
                self.services.notifier.wake_worker(wid, b"stop")
                proc.terminate()  # SIGTERM: stop after the current execution
        assert self._drain_deadline is not None
        if self.procs and time.monotonic() >= self._drain_deadline:
            log.warning("drain: %d execution(s) still running after the grace period; stopping them, "
                        "their messages go back to the queue", len(self.procs))
            for proc in self.procs.values():
                proc.kill()
            for wid, proc in list(self.procs.items()):
                self._reaped(wid, proc.wait(), restart=False)
        return not self.procs

    def no_backend(self, reason: str) -> None:
        """A worker found no usable sandbox backend: stop starting workers (they would only die at
        start, in a loop) and say why on the actors that wait."""
        self.backend_error = (f"No sandbox backend can run executions on this host: {reason} Fix it "
                              "(see `lightabaco doctor`) and restart the server.")
        self.services.backend_error = self.backend_error
        log.error("%s", self.backend_error)

    def _loop(self) -> None:
        assert self.bell is not None
        while not self._stop.is_set():
            try:
                if self._drain_deadline is not None:
                    if self._drain_pass():
                        self._drained.set()
                        return
                else:
                    self.reconcile()
            except Exception:  # a failed pass must not kill the supervisor
                log.exception("supervisor pass failed")
            self.bell.wait(0.1 if self._drain_deadline is not None else 1.0)

    # -- one pass --------------------------------------------------------------------------------

    def reconcile(self) -> None:
        for wid, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                self._reaped(wid, code)
        self._check_pulls()
        now = time.monotonic()
        if now - self._last_lease_check >= LEASE_CHECK_S:
            self._last_lease_check = now
            rows = mailbox.release_expired()
            if rows:
                log.warning("returned %d expired lease(s) to the queue", len(rows))
                recover_leases(rows, self.settings.max_attempts, "Its worker stopped renewing the lease")
        if now - self._last_tag_check >= TAG_CHECK_S:
            self._last_tag_check = now
            image_tags.follow_moved_tags(self.services)
        if self.settings.autoscaling:
            self.autoscale()
        self.ensure_workers_for_waiting()
        rows = list(Worker.select())
        pending = [r for r in rows if r.status == "REQUESTED" and r.id not in self.procs
                   and r.id not in self.pulls]
        for row in rows:
            if row.id in self.pulls:
                if row.status in worker_records.STOPPING_STATUSES:
                    self._cancel_pull(row.id)
            elif row.id in self.procs:
                if row.status in worker_records.STOPPING_STATUSES:
                    self._stop_worker(row)
            elif row.status in worker_records.STOPPING_STATUSES or row.status != "REQUESTED":
                # A row without a process: asked to stop before it started, or left by a worker that
                # is gone. Either way nothing runs it.
                Worker.delete().where(Worker.dbid == row.dbid).execute()
        if self.backend_error:
            # Say why nothing runs, on every actor waiting for a worker (not its fault: no ERROR).
            waiting_actors = {r.actor_dbid for r in pending}
            if waiting_actors:
                Actor.update(status_message=self.backend_error).where(
                    Actor.dbid.in_(list(waiting_actors))
                    & (Actor.status_message != self.backend_error)).execute()
            return
        ready = []
        for row in sorted(pending, key=lambda r: r.create_time):
            actor = Actor.get_or_none(Actor.dbid == row.actor_dbid)
            if actor is None or actor.status == "SHUTTING_DOWN":
                Worker.delete().where(Worker.dbid == row.dbid).execute()
            elif self._image_is_local(actor.image):
                ready.append(row)
            else:
                self._start_pull(row, actor)
        for row in ready:
            if self._running_count() >= self.settings.workers and not self._evict_one(row.actor_dbid):
                break
            if self._running_count() < self.settings.workers:
                self._spawn(row)

    def _running_count(self) -> int:
        """Worker processes holding execution slots (pull processes are not among them)."""
        return sum(1 for p in self.procs.values() if p.poll() is None)

    # -- pulls ---------------------------------------------------------------------------------------

    def _image_is_local(self, image: str) -> bool:
        try:
            self.services.images.get(image)
            return True
        except Exception:  # not there, or unreadable: the pull process says why, on the actor
            return False

    def _start_pull(self, row: Worker, actor: Actor) -> None:
        """Hand the row to a pull process if the pull caps allow; otherwise it waits for a later pass."""
        owner = f"{actor.tenant}/{actor.owner}"
        if len(self.pulls) >= max(1, self.settings.pull_concurrency):
            return
        if sum(1 for j in self.pulls.values() if j.owner == owner) >= max(1, self.settings.pull_concurrency_per_user):
            return
        if any(j.image == actor.image for j in self.pulls.values()):
            return  # the same image is already coming: its worker starts without a second download
        n = Worker.update(status="PULLING IMAGE", last_health_check_time=time.time()).where(
            (Worker.dbid == row.dbid) & (Worker.status == "REQUESTED")).execute()
        if n == 0:
            return
        argv = [sys.executable, "-m", "lightabaco.workers.puller", "--home", str(self.settings.home),
                "--worker-id", row.id, "--actor", row.actor_dbid, "--revision", str(row.revision)]
        env = lineage.child_env({**os.environ, **self.settings.to_env()}, str(self.settings.home))
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        self.pulls[row.id] = PullJob(proc, row.actor_dbid, owner, actor.image, time.monotonic())
        Worker.update(pid=proc.pid, cid=str(proc.pid)).where(Worker.dbid == row.dbid).execute()
        log.info("pulling %s for %s (pid %d, worker %s)", actor.image, row.actor_dbid, proc.pid, row.id)

    def _check_pulls(self) -> None:
        limit = self.settings.pull_timeout_s + PULL_GRACE_S
        for wid, job in list(self.pulls.items()):
            code = job.proc.poll()
            if code is None and time.monotonic() - job.started > limit:
                job.proc.kill()
                job.proc.wait()
                self.pulls.pop(wid)
                self._pull_failed(wid, job, f"the pull did not finish within {self.settings.pull_timeout_s:g} s")
            elif code is not None:
                self.pulls.pop(wid)
                if code == 0:
                    # The image is local now: the row waits for an execution slot like any other.
                    Worker.update(status="REQUESTED").where(
                        (Worker.id == wid) & (Worker.status == "PULLING IMAGE")).execute()
                    self.services.notifier.wake_supervisor()
                elif code != EXIT_IMAGE:  # EXIT_IMAGE: the puller already put the actor in ERROR
                    self._pull_failed(wid, job, f"the pull process ended with status {code}")

    def _pull_failed(self, wid: str, job: PullJob, why: str) -> None:
        message = (f"Error pulling image {job.image}: {why}. Check the registry, or import the image with "
                   "`lightabaco images import`, then PUT the actor with force=true.")
        log.warning("actor %s: %s", job.actor_dbid, message)
        row = Worker.get_or_none(Worker.id == wid)
        Worker.delete().where(Worker.id == wid).execute()
        if row is not None:
            Actor.update(status="ERROR", status_message=message).where(
                (Actor.dbid == job.actor_dbid) & (Actor.revision == row.revision)).execute()

    def _cancel_pull(self, wid: str) -> None:
        """The row was asked to stop (actor deleted or updated): the pull is no longer wanted."""
        job = self.pulls.pop(wid)
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait()
        Worker.delete().where(Worker.id == wid).execute()

    def _spawn(self, row: Worker) -> None:
        actor = Actor.get_or_none(Actor.dbid == row.actor_dbid)
        if actor is None or actor.status == "SHUTTING_DOWN":
            Worker.delete().where(Worker.dbid == row.dbid).execute()
            return
        argv = [sys.executable, "-m", "lightabaco.workers.worker", "--home", str(self.settings.home),
                "--worker-id", row.id, "--actor", row.actor_dbid, "--revision", str(row.revision)]
        env = lineage.child_env({**os.environ, **self.settings.to_env()}, str(self.settings.home))
        n = Worker.update(status="SPAWNER SETUP").where(
            (Worker.dbid == row.dbid) & (Worker.status == "REQUESTED")).execute()
        if n == 0:
            return
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        self.procs[row.id] = proc
        Worker.update(pid=proc.pid, cid=str(proc.pid)).where(Worker.dbid == row.dbid).execute()
        log.info("started worker %s (pid %d) for %s rev %d", row.id, proc.pid, row.actor_dbid,
                 row.revision)

    def _stop_worker(self, row: Worker) -> None:
        asked = self.stop_asked.setdefault(row.id, time.monotonic())
        proc = self.procs[row.id]
        if time.monotonic() - asked > STOP_GRACE_S and proc.poll() is None:
            proc.terminate()
        else:
            self.services.notifier.wake_worker(row.id, b"stop")

    def _reaped(self, wid: str, code: int, restart: bool = True) -> None:
        self.procs.pop(wid, None)
        self.stop_asked.pop(wid, None)
        row = Worker.get_or_none(Worker.id == wid)
        leases = mailbox.release_owner(wid)
        if leases:
            recover_leases(leases, self.settings.max_attempts, "Its worker process died")
        if row is not None:
            Worker.delete().where(Worker.id == wid).execute()
        if code == EXIT_BACKEND:
            self.no_backend(row.status_message if row is not None and row.status_message else
                            f"worker {wid} could not start a sandbox backend.")
        if code not in (0, EXIT_IMAGE, EXIT_NEED_PULL) and code != -15:
            log.warning("worker %s exited with status %s", wid, code)
        if not restart or row is None or code in (0, EXIT_IMAGE, EXIT_BACKEND):
            return
        # An unexpected death: restart the actor's worker unless it keeps dying.
        crashes = self.crashes[row.actor_dbid]
        now = time.monotonic()
        crashes.append(now)
        while crashes and now - crashes[0] > CRASH_WINDOW_S:
            crashes.popleft()
        actor = Actor.get_or_none(Actor.dbid == row.actor_dbid)
        if actor is None:
            return
        if len(crashes) >= CRASH_LIMIT:
            Actor.update(status="ERROR", status_message=(
                f"Worker processes for this actor died {len(crashes)} times within "
                f"{CRASH_WINDOW_S:.0f} s (last exit status {code}); see the server log, then PUT the "
                "actor with force=true.")).where(Actor.dbid == actor.dbid).execute()
            return
        worker_records.ensure_one_worker(self.services, actor)

    def _evict_one(self, for_actor: str) -> bool:
        """Stop the longest-idle READY worker of an actor with an empty mailbox to make room."""
        waiting = mailbox.count_all()
        candidates = [w for w in Worker.select().where(Worker.status == "READY")
                      if w.id in self.procs and w.actor_dbid != for_actor
                      and not waiting.get(w.actor_dbid) and w.id not in self.stop_asked]
        if not candidates:
            return False
        victim = min(candidates, key=lambda w: w.last_execution_time or w.create_time)
        Worker.update(status="SHUTDOWN_REQUESTED").where(Worker.dbid == victim.dbid).execute()
        self._stop_worker(victim)
        return False  # room appears when it exits; the next pass spawns

    # -- scaling -----------------------------------------------------------------------------------

    def ensure_initial_workers(self) -> None:
        """At start-up: one worker per actor, actors with waiting messages first, within the cap."""
        waiting = mailbox.count_all()
        actors = list(Actor.select().where(~Actor.status.in_(["ERROR", "SHUTTING_DOWN"])))
        actors.sort(key=lambda a: -waiting.get(a.dbid, 0))
        for actor in actors[: self.settings.workers]:
            worker_records.ensure_one_worker(self.services, actor)

    def ensure_workers_for_waiting(self) -> None:
        waiting = mailbox.count_all()
        if not waiting:
            return
        live = {w.actor_dbid for w in Worker.select(Worker.actor_dbid).where(
            Worker.status.in_(worker_records.LIVE_STATUSES))}
        for dbid in waiting:
            if dbid not in live:
                actor = Actor.get_or_none(Actor.dbid == dbid)
                if actor is not None:
                    worker_records.ensure_one_worker(self.services, actor)

    def autoscale(self) -> None:
        waiting = mailbox.count_all()
        by_actor: dict[str, list[Worker]] = defaultdict(list)
        for w in Worker.select():
            by_actor[w.actor_dbid].append(w)
        now = time.time()
        for actor in Actor.select().where(Actor.stateless & ~Actor.status.in_(["ERROR",
                                                                                  "SHUTTING_DOWN"])):
            ws = [w for w in by_actor.get(actor.dbid, [])
                  if w.status not in worker_records.STOPPING_STATUSES and w.status != "ERROR"]
            queued = waiting.get(actor.dbid, 0)
            cap = min(actor.max_workers or self.settings.max_workers_per_actor, self.settings.workers)
            starting_or_idle = [w for w in ws if w.status != "BUSY"]
            if queued > len(starting_or_idle) and len(ws) < cap:
                # At the global cap the new row waits until an idle worker of a quiet actor is evicted.
                worker_records.request_worker(self.services, actor)
            elif queued == 0 and len(ws) > 1:
                # Keep one warm worker; stop extra idle ones after worker_idle_s.
                idle = [w for w in ws if w.status == "READY"
                        and now - (w.last_execution_time or w.create_time) > self.settings.worker_idle_s]
                for w in idle[: len(ws) - 1]:
                    Worker.update(status="SHUTDOWN_REQUESTED").where(Worker.dbid == w.dbid).execute()
                    self.services.notifier.wake_worker(w.id, b"stop")
