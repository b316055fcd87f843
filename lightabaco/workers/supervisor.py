"""The supervisor: keeps this host's shared pool of runner processes alive and the worker slots honest.

The pool (issue 9) is a fixed number of runner processes (`pool_size`, default the cores) serving every
actor (workers/worker.py, workers/claims.py). An actor's workers — Abaco's worker records — are rows:
concurrency slots over the pool, never processes, so 1,000 actors cost 1,000 rows. The supervisor runs
as a thread of the server (or of a worker host, `lightabaco workers`). Each pass: respawn dead pool
processes (the slots they held are freed and their leases go back to the queue), turn REQUESTED slots
READY once the actor's image is in the store (pulling it first in a separate, capped pull process:
workers/puller.py never takes a pool process), delete slots asked to stop once they are idle,
autoscale stateless actors' slots, and return expired leases. Passes run on every doorbell ring and at
least once a second.
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

from lightabaco.abaco import image_tags, signals
from lightabaco.abaco import workers as worker_records
from lightabaco.abaco.doorbell import Doorbell, Ringer
from lightabaco.store import mailbox
from lightabaco.store.db import write_tx
from lightabaco.store.models import Actor, Execution, Message, Worker
from lightabaco.workers import lineage
from lightabaco.store import notify as db_notify
from lightabaco.store.db import is_postgres
from lightabaco.workers import claims
from lightabaco.workers.notify import SUPERVISOR, pool_name
from lightabaco.workers.worker import EXIT_BACKEND, EXIT_IMAGE

log = logging.getLogger("lightabaco.supervisor")

CRASH_WINDOW_S = 60.0
CRASH_LIMIT = 5  # pool process deaths while running one actor, within the window, before the actor goes to ERROR
RESPAWN_LIMIT = 10  # pool process deaths within the window before respawns slow down to one per RESPAWN_PAUSE_S
RESPAWN_PAUSE_S = 5.0
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


STARTING_STATUSES = ("SPAWNER SETUP", "PULLING IMAGE", "CREATING CONTAINER", "UPDATING STORE")


def recover_on_start(max_attempts: int, host: str | None = None) -> dict[str, int]:
    """After a crash or restart none of this host's pool processes is alive: free the slots they held
    and requeue their messages. On SQLite (one machine) every lease is this host's; on PostgreSQL only
    the slots this host (`host`) held: other hosts' leases expire on their own if those hosts are dead."""
    shared = is_postgres() and host is not None
    busy = Worker.select(Worker.id).where(Worker.status == "BUSY")
    if shared:
        busy = busy.where(Worker.host_id == host)
    owners = {w.id for w in busy}
    if shared:
        rows = []
        for owner in owners:
            rows += mailbox.release_owner(owner)
    else:
        rows = mailbox.release_all_except(set())
    recover_leases(rows, max_attempts, "The server stopped while this execution was running")
    freed = Worker.update(status="READY").where(Worker.id.in_(list(owners))).execute() if owners else 0
    # Slots a pull or start-up was preparing: prepared again. Stop requests: done now.
    Worker.update(status="REQUESTED").where(Worker.status.in_(list(STARTING_STATUSES))).execute()
    Worker.delete().where(Worker.status.in_(list(worker_records.STOPPING_STATUSES))).execute()
    orphans = 0
    if not shared:
        # RUNNING executions whose message is no longer in the mailbox cannot be re-run: say so.
        queued = {(m.actor_dbid, m.execution_id) for m in Message.select(Message.actor_dbid,
                                                                          Message.execution_id)}
        for row in Execution.select(Execution.dbid, Execution.actor_dbid, Execution.id).where(
                Execution.status == "RUNNING"):
            if (row.actor_dbid, row.id) not in queued:
                orphans += Execution.update(
                    status="ERROR", live_log_path=None, finish_time=time.time(),
                    status_message="The server stopped while this execution was running and its message "
                    "could not be recovered.").where(Execution.dbid == row.dbid).execute()
    return {"worker_rows": freed, "requeued": len(rows), "orphans": orphans}


class Supervisor:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.settings = services.settings
        self.size = self.settings.pool_processes()
        self.host = self.settings.host_id()
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # pool slot number -> runner process
        self.pulls: dict[str, PullJob] = {}  # worker id -> the pull preparing its image
        self.crashes: dict[str, deque[float]] = defaultdict(deque)  # actor dbid -> pool deaths on it
        self.deaths: deque[float] = deque()  # pool process deaths (respawn pacing)
        self._next_respawn = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_lease_check = 0.0
        self._last_tag_check = 0.0
        self.bell: Doorbell | None = None
        self.ringer = Ringer(self.settings.home)
        self.backend_error = ""  # set when no sandbox backend can run here: no pool process is started
        self._drain_deadline: float | None = None  # set by drain(): finish running work, start none
        self._stop_rung: set[int] = set()
        self._drained = threading.Event()
        services.pool_size = self.size

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, recover: bool = True) -> None:
        if recover:
            info = recover_on_start(self.settings.max_attempts, self.host)
            log.info("recovery: %s", info)
        self.bell = Doorbell(self.settings.home, SUPERVISOR)
        # PostgreSQL: a message sent through an API on another host also wakes this supervisor.
        self.bell.wake_on(db_notify.MESSAGES, ring=b"s")
        self.ensure_initial_workers()
        self.fill_pool()
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
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for slot in list(self.procs):
            self._reaped(slot, 0, restart=False)
        if self.bell is not None:
            self.bell.close()

    def drain(self, grace_s: float) -> bool:
        """Graceful stop (SIGTERM): start nothing more, let running executions finish for up to
        `grace_s`, then kill what still runs (its lease returns: the message runs after the next
        start). Done by the supervisor's own thread, the one the pool's death signal is tied to.
        Returns True when everything finished within the grace period."""
        self._drain_deadline = time.monotonic() + max(grace_s, 0.0)
        if self.bell is not None:
            self.services.notifier.wake_supervisor()
        if self._thread is None or not self._thread.is_alive():
            return True
        self._drained.wait(grace_s + 30.0)
        return not self.procs

    def _drain_pass(self) -> bool:
        """One pass of the drain; True once no pool process is left."""
        for wid, job in list(self.pulls.items()):
            if job.proc.poll() is None:
                job.proc.kill()
            job.proc.wait()
            self.pulls.pop(wid)
            Worker.update(status="REQUESTED").where(Worker.id == wid).execute()
        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                self._reaped(slot, code, restart=False)
            elif slot not in self._stop_rung:
                self._stop_rung.add(slot)
                self.ringer.ring(pool_name(slot), b"stop")
                proc.terminate()  # SIGTERM: stop after the current execution
        assert self._drain_deadline is not None
        if self.procs and time.monotonic() >= self._drain_deadline:
            log.warning("drain: %d pool process(es) still running an execution after the grace period; "
                        "stopping them, their messages go back to the queue", len(self.procs))
            for proc in self.procs.values():
                proc.kill()
            for slot, proc in list(self.procs.items()):
                self._reaped(slot, proc.wait(), restart=False)
        return not self.procs

    def no_backend(self, reason: str) -> None:
        """A pool process found no usable sandbox backend: stop starting them (they would only die at
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

    # -- the pool --------------------------------------------------------------------------------

    def fill_pool(self) -> None:
        """Start the pool processes that are missing (at start, and after a death)."""
        if self.backend_error or self._drain_deadline is not None or self._stop.is_set():
            return
        if time.monotonic() < self._next_respawn:
            return
        for slot in range(self.size):
            if slot not in self.procs:
                self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        argv = [sys.executable, "-m", "lightabaco.workers.worker", "--home", str(self.settings.home),
                "--pool-slot", str(slot)]
        env = lineage.child_env({**os.environ, **self.settings.to_env()}, str(self.settings.home))
        self.procs[slot] = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
        log.info("started pool process %d (pid %d)", slot, self.procs[slot].pid)

    def _reaped(self, slot: int, code: int, restart: bool = True) -> None:
        """A pool process ended: free the slots it held (their messages go back to the queue) and
        count the death against the actors it was running."""
        proc = self.procs.pop(slot)
        held = list(Worker.select().where((Worker.status == "BUSY") & (Worker.pid == proc.pid)
                                          & (Worker.host_id == self.host)))
        for row in held:
            # As in Abaco, a worker that died is replaced by a new one (a new id); its message runs again.
            leases = mailbox.release_owner(row.id)
            if leases:
                recover_leases(leases, self.settings.max_attempts, "Its pool process died")
            if not restart:  # stopping or draining: the slot stays for the next start
                Worker.update(status="READY").where((Worker.dbid == row.dbid)
                                                    & (Worker.status == "BUSY")).execute()
                continue
            Worker.delete().where(Worker.dbid == row.dbid).execute()
            actor = Actor.get_or_none(Actor.dbid == row.actor_dbid)
            if actor is not None and actor.status not in ("ERROR", "SHUTTING_DOWN"):
                worker_records.request_worker(self.services, actor)
        if code == EXIT_BACKEND:
            self.no_backend(self._backend_reason())
            return
        if code not in (0, -15):
            log.warning("pool process %d (pid %d) exited with status %s", slot, proc.pid, code)
        if not restart:
            return
        now = time.monotonic()
        if code not in (0, -15):
            self.deaths.append(now)
            while self.deaths and now - self.deaths[0] > CRASH_WINDOW_S:
                self.deaths.popleft()
            if len(self.deaths) >= RESPAWN_LIMIT:
                self._next_respawn = now + RESPAWN_PAUSE_S
            for row in held:
                self._count_crash(row.actor_dbid, code)
        self.fill_pool()

    def _count_crash(self, actor_dbid: str, code: int) -> None:
        crashes = self.crashes[actor_dbid]
        now = time.monotonic()
        crashes.append(now)
        while crashes and now - crashes[0] > CRASH_WINDOW_S:
            crashes.popleft()
        if len(crashes) >= CRASH_LIMIT:
            crashes.clear()
            Actor.update(status="ERROR", status_message=(
                f"Pool processes running this actor died {CRASH_LIMIT} times within "
                f"{CRASH_WINDOW_S:.0f} s (last exit status {code}); see the server log, then PUT the "
                "actor with force=true.")).where(Actor.dbid == actor_dbid).execute()

    def _backend_reason(self) -> str:
        try:
            probe = getattr(self.services.backend, "require_usable", None)
            if probe is not None:
                probe()
        except Exception as exc:
            return str(exc)
        return "a pool process could not start a sandbox backend."

    # -- one pass --------------------------------------------------------------------------------

    def reconcile(self) -> None:
        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                self._reaped(slot, code)
        self.fill_pool()
        self._check_pulls()
        now = time.monotonic()
        if now - self._last_lease_check >= LEASE_CHECK_S:
            self._last_lease_check = now
            rows = mailbox.release_expired()
            if rows:
                log.warning("returned %d expired lease(s) to the queue", len(rows))
                recover_leases(rows, self.settings.max_attempts, "Its worker stopped renewing the lease")
            freed = claims.free_stale_slots(self.settings.lease_s)
            if freed:
                log.warning("freed %d worker slot(s) whose process or host is gone", freed)
        # A worker host's store is not the deployment's: only the API host follows moved tags.
        if not self.settings.images_source and now - self._last_tag_check >= TAG_CHECK_S:
            self._last_tag_check = now
            image_tags.follow_moved_tags(self.services)
        if self.settings.autoscaling:
            self.autoscale()
        self.ensure_workers_for_waiting()
        self.tend_slots()

    def tend_slots(self) -> None:
        """Slots asked to stop go once idle; REQUESTED slots become READY when their image is here."""
        leased = {m.lease_owner for m in Message.select(Message.lease_owner).where(
            Message.lease_owner.is_null(False))}
        pending = []
        for row in Worker.select().where(Worker.status != "READY"):
            if row.id in self.pulls:
                if row.status in worker_records.STOPPING_STATUSES:
                    self._cancel_pull(row.id)
            elif row.status in worker_records.STOPPING_STATUSES:
                if row.id not in leased:  # idle: nothing runs in it (a running execution finishes first)
                    Worker.delete().where(Worker.dbid == row.dbid).execute()
            elif row.status == "REQUESTED":
                pending.append(row)
        if self.backend_error:
            # Say why nothing runs, on every actor waiting for a worker (not its fault: no ERROR).
            waiting_actors = {r.actor_dbid for r in pending}
            if waiting_actors:
                Actor.update(status_message=self.backend_error).where(
                    Actor.dbid.in_(list(waiting_actors))
                    & (Actor.status_message != self.backend_error)).execute()
            return
        for row in sorted(pending, key=lambda r: r.create_time):
            actor = Actor.get_or_none(Actor.dbid == row.actor_dbid)
            if actor is None or actor.status == "SHUTTING_DOWN" or actor.revision != row.revision:
                Worker.delete().where(Worker.dbid == row.dbid).execute()
                continue
            image = self._local_image(actor.image)
            stale = image is not None and bool(actor.image_digest) and image.config_digest != actor.image_digest
            if (image is None or stale) and self.settings.images_source:
                # A worker host: from the API's store through the hook (also when its own copy of the tag
                # is older than the revision's image), else the slot is left to the API host's supervisor
                # (which pulls it there).
                from lightabaco.workers import imagesource

                image = imagesource.fetch_missing(self.services, actor.image, actor.image_digest)
            if image is not None:
                self._make_ready(row, actor, image)
            elif not self.settings.images_source:
                self._start_pull(row, actor)

    def _make_ready(self, row: Worker, actor: Actor, image: Any) -> None:
        image_tags.record_digest(actor.dbid, actor.revision, image.config_digest)
        now = time.time()
        with write_tx():
            n = Worker.update(status="READY", last_health_check_time=now, cid=f"{self.host}:pool",
                              location=f"local://{getattr(self.services.backend, 'name', 'sandbox')}").where(
                (Worker.dbid == row.dbid) & (Worker.status == "REQUESTED")).execute()
            became = Actor.update(status="READY", status_message=" ").where(
                (Actor.dbid == actor.dbid) & (Actor.revision == row.revision)
                & ~Actor.status.in_(["READY", "SHUTTING_DOWN", "ERROR"])).execute() if n else 0
        if n:
            self.services.notifier.wake_actor(actor.dbid)  # messages may have waited for this slot
        if became:
            actor = Actor.get_or_none(Actor.dbid == actor.dbid)
            if actor is not None:
                signals.emit(self.services, actor, signals.ACTOR_READY, status_message=" ")

    # -- pulls ---------------------------------------------------------------------------------------

    def _local_image(self, image: str) -> Any:
        try:
            return self.services.images.get(image)
        except Exception:  # not there, or unreadable: the pull process says why, on the actor
            return None

    def _start_pull(self, row: Worker, actor: Actor) -> None:
        """Hand the row to a pull process if the pull caps allow; otherwise it waits for a later pass."""
        owner = f"{actor.tenant}/{actor.owner}"
        if len(self.pulls) >= max(1, self.settings.pull_concurrency):
            return
        if sum(1 for j in self.pulls.values() if j.owner == owner) >= max(1, self.settings.pull_concurrency_per_user):
            return
        if any(j.image == actor.image for j in self.pulls.values()):
            return  # the same image is already coming: its slot becomes READY without a second download
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
                    # The image is local now: the next pass makes the slot (and its siblings) READY.
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

    # -- scaling -----------------------------------------------------------------------------------

    def ensure_initial_workers(self) -> None:
        """At start-up: every actor that can run has at least one worker slot (rows, not processes:
        no cap, whatever the number of actors)."""
        have = {w.actor_dbid for w in Worker.select(Worker.actor_dbid).where(
            Worker.status.in_(worker_records.LIVE_STATUSES))}
        for actor in Actor.select().where(~Actor.status.in_(["ERROR", "SHUTTING_DOWN"])):
            if actor.dbid not in have:
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
        """Stateless actors get more slots while messages wait (up to max_workers), and lose extra idle
        slots after worker_idle_s (one always stays)."""
        waiting = mailbox.count_all()
        by_actor: dict[str, list[Worker]] = defaultdict(list)
        for w in Worker.select():
            by_actor[w.actor_dbid].append(w)
        now = time.time()
        busy_actors = set(waiting) | {a for a, ws in by_actor.items() if len(ws) > 1}
        if not busy_actors:
            return
        for actor in Actor.select().where(Actor.dbid.in_(list(busy_actors)) & Actor.stateless
                                          & ~Actor.status.in_(["ERROR", "SHUTTING_DOWN"])):
            ws = [w for w in by_actor.get(actor.dbid, [])
                  if w.status not in worker_records.STOPPING_STATUSES and w.status != "ERROR"]
            queued = waiting.get(actor.dbid, 0)
            cap = actor.max_workers or self.settings.max_workers_per_actor
            starting_or_idle = [w for w in ws if w.status != "BUSY"]
            if queued > len(starting_or_idle) and len(ws) < cap:
                # Slots are rows: add all that the queue needs at once (the pool bounds what runs).
                for _ in range(min(queued - len(starting_or_idle), cap - len(ws))):
                    worker_records.request_worker(self.services, actor)
            elif queued == 0 and len(ws) > 1:
                # Keep one slot; drop extra idle ones after worker_idle_s.
                idle = [w for w in ws if w.status == "READY"
                        and now - (w.last_execution_time or w.create_time) > self.settings.worker_idle_s]
                for w in idle[: len(ws) - 1]:
                    Worker.delete().where((Worker.dbid == w.dbid) & (Worker.status == "READY")).execute()
