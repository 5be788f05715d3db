"""The master's jobs: taking them in, answering for them, ending them.

::

    SUBMIT ──► on_submit: a Job per id, held in ClientState.jobs, queued (Scheduler)
    RESULT ──► on_result: the Job leaves ExecutorState.running ──► reply ──► RESULTS (flush)
    CANCEL ──► on_cancel: a queued job is answered CANCELLED; a running one, with force,
               is stopped (its executor killed: cw.master.peers)
    a deadline passes ──► expire_jobs: TIMEOUT, its executor killed

Every job a client sent is answered exactly once: a result, an error, a
refusal, CANCELLED, TIMEOUT or LOST (``reply``). Payloads stay opaque bytes.
"""
from __future__ import annotations

import logging
from itertools import islice
from typing import Callable, Iterator, Optional

from ..protocol import (
    STATUSES,
    Cancel,
    ErrorCode,
    Kind,
    Message,
    Result,
    ResultBatch,
    Status,
    Submit,
    job_runs,
)
from ..transport import COPY_BELOW
from .leases import Leases
from .monitor import Monitor
from .resources import never_runs
from .scheduler import Scheduler
from .state import Books, ClientState, ExecutorState, Job

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 2
_CANCELLED = Status.CANCELLED.value


def chunks(results: list, budget: int = 40_000) -> Iterator[list]:
    """RESULTS entries in runs whose JSON stays under ``budget`` bytes."""
    chunk: list = []
    size = 0
    for entry in results:
        cost = 40 + (len(entry.error) * 2 if entry.error else 0)  # ids, status; escaped text
        if entry.worker:
            cost += 2 * len(entry.worker)
        if chunk and size + cost > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += cost
    if chunk:
        yield chunk


def started(state: ExecutorState, job: Job) -> bool:
    """An executor runs its tasks in arrival order: only the first has started."""
    return next(iter(state.running), None) == job.tid


class Jobs:
    """Jobs from SUBMIT to their one answer. ``kill`` ends an executor
    (``Peers.kill``): the only way to stop a job that has started."""

    def __init__(self, books: Books, sched: Scheduler, leases: Leases, monitor: Monitor,
                 kill: Callable[[ExecutorState], None]) -> None:
        self.books = books
        self.sched = sched
        self.leases = leases
        self.monitor = monitor
        self.kill = kill
        self.next_tid = 1

    # -- taking jobs in ----------------------------------------------------
    def on_submit(self, identity: bytes, msg: Message, now: float) -> None:
        client = self.books.clients.get(identity)
        if client is None:
            self.books.unknown(identity)
            return
        client.last_seen = now
        self.books.moved = True
        submit: Submit = msg.body
        retries = DEFAULT_RETRIES if submit.retries is None else submit.retries
        never = self.never_runs(submit.resources)  # the batch's jobs share their resources
        for frame, run in job_runs(submit, msg.payload):
            context = bytes(frame)  # a Frame would pin its receive buffer while jobs wait
            for jid, frames in run:
                if jid not in client.jobs:  # else a resubmission of a job we hold: keep the first
                    self.take(client, jid, context, frames, retries, submit.timeout, submit.expected,
                              submit.resources, never)
        # A client with one job in flight and nothing else queued: a caller
        # that waits for each result. Its next jobs may take a lane.
        if len(client.jobs) == 1 and self.sched.queued <= 1 and self.leases.shelf:
            self.leases.lend(client)

    def take(self, client: ClientState, jid: int, context: bytes, frames: list, retries: int,
             timeout: Optional[float], expected: Optional[float] = None,
             needs: Optional[list] = None, never: Optional[str] = None) -> None:
        # Small frames are copied out of their zmq.Frame, which costs far
        # more memory than the bytes while a million jobs wait in the queue.
        payload = (context, *(f.bytes if len(f) < COPY_BELOW else f for f in frames))
        size = sum(map(len, payload))
        refusal = self.books.limits.check(len(client.jobs), client.held_bytes, size) or never
        if refusal:
            self.reply_refused(client.identity, jid, refusal)
            return
        job = Job(self.next_tid, client.identity, jid, payload, retries, size, timeout)
        job.expected, job.needs = expected, needs
        client.held_bytes += size
        self.next_tid += 1
        client.jobs[jid] = job
        self.sched.enqueue(client, job)
        self.books.counts["submitted"] += 1

    def never_runs(self, needs: Optional[list]) -> Optional[str]:
        """Why no registered worker could ever run a job that needs these resources."""
        if needs is None:
            return None
        if len(needs) not in (3, 4) or needs[3:] not in ([], [1]):
            return f"resources {needs!r}: expected [cpus, gpus, mem] or [cpus, gpus, mem, 1]"
        return never_runs(needs, [sup.pool for sup in self.books.supervisors.values() if sup.pool])

    def on_cancel(self, identity: bytes, msg: Message, now: float) -> None:
        client = self.books.clients.get(identity)
        if client is None:
            self.books.unknown(identity)
            return
        cancel: Cancel = msg.body
        if cancel.lane is not None:  # a job it sent down a lane, to stop by force
            self.kill_lane(client, cancel.lane, cancel.force)
            return
        job = client.jobs.get(cancel.id)
        if job is None:  # finished meanwhile (the client drops the late result), or never held
            self.books.refuse(identity, "no such job", cancel.id, ErrorCode.UNKNOWN_JOB)
            return
        client.last_seen = now
        if job.executor is None:  # still queued: dropped from the queue lazily
            job.cancelled = True
            self.forget(job)
            self.reply(job, Status.CANCELLED)
            self.sched.unpark()  # what an idle executor could not finish may be gone
        elif cancel.force:
            self.stop_job(job, Status.CANCELLED, "cancelled while running (force=True)")
        else:  # dispatched: its executor drops it if it has not begun it, else it runs on
            job.cancelled = True  # and its result goes nowhere
            self.books.send(job.executor, Message(Kind.CANCEL, {"id": job.tid}))

    def kill_lane(self, client: ClientState, worker: str, force: bool) -> None:
        """Stop a job a client sent down a lane it was lent: only by killing
        the lane's executor (the client resends what else the lane held).
        Not if the lane was lent to another since: that one's jobs run there."""
        state = self.leases.lent_last.get(client.identity)
        if state is not None and force and state.name == worker and state.lane_client == client.identity \
                and not state.killed and state.identity in self.books.executors:
            self.kill(state)

    # -- results -------------------------------------------------------------
    def on_result(self, identity: bytes, msg: Message, now: float) -> None:
        state = self.books.executors.get(identity)
        if state is None:  # presumed dead meanwhile: its jobs already went elsewhere
            self.books.counts["duplicates"] += 1
            self.books.unknown(identity, "executor: send READY first")
            return
        state.last_seen = now
        self.books.moved = True
        batch: ResultBatch = msg.body
        results = batch.results
        if batch.busy is not None and results:
            state.observe(batch.busy, len(results))
        frames = iter(msg.payload)
        for result in results:
            payload = tuple(islice(frames, result.frames))
            job = self.finish_task(state, result.id, now)
            if job is None:  # a late duplicate of a job requeued, timed out or cancelled
                self.books.counts["duplicates"] += 1
                self.books.refuse(identity, "no such job running here", result.id, ErrorCode.UNKNOWN_JOB)
                continue
            state.done += result.status != _CANCELLED  # one dropped before it began never ran
            client = self.forget(job)
            if client is not None and result.ran is not None:
                client.observe(result.ran, job.payload[1:2])  # how long its jobs take (Scheduler.take)
            if not job.cancelled:
                self.reply(job, STATUSES[result.status], payload, result.error, result.ran, state.name)
            else:
                self.books.counts["cancelled"] += 1  # dropped unbegun, or ran for nobody

    def finish_task(self, state: ExecutorState, tid: int, now: float) -> Optional[Job]:
        """A task left its executor: it has room; the next one there starts."""
        job = state.running.pop(tid, None)
        self.sched.offer(state)
        if job is not None and job.needs is not None:
            self.sched.unpark()  # its resources are free: executors that waited for them look again
        if state.running and not state.killed:
            self.sched.started(state, now)
        return job

    # -- answering clients ---------------------------------------------------
    def flush(self) -> None:
        """Send each client the results this turn produced, in one RESULTS."""
        for client in self.books.clients.values():
            frames = iter(client.outbox)
            for chunk in chunks(client.results):
                payload = tuple(islice(frames, sum(entry.frames for entry in chunk)))
                self.books.send(client.identity, Message(Kind.RESULTS, {"results": chunk}, payload))
            client.results, client.outbox = [], []

    def reply(self, job: Job, status: Status, payload: tuple = (), error: Optional[str] = None,
              ran: Optional[float] = None, worker: Optional[str] = None) -> None:
        """Answer a job's client; ``worker`` ran it, named unless STARTED did already."""
        # A cancelled job is not done: it never ran, or its result went nowhere.
        self.books.counts["cancelled" if status is Status.CANCELLED else "lost" if status is Status.LOST
                          else "done"] += 1
        if status is not Status.OK and status is not Status.UNREACHABLE:  # that one the client resends
            self.monitor.job_failed(self.books, job, status)
        if job.announced:
            worker = None
        job.announced = True  # no STARTED after its result
        self.answer(job.client, job.jid, status, payload, error, ran, worker)

    def answer(self, identity: bytes, jid: int, status: Status, payload: tuple = (),
               error: Optional[str] = None, ran: Optional[float] = None,
               worker: Optional[str] = None) -> None:
        client = self.books.clients.get(identity)
        if client is None:
            return  # gone: nobody to tell
        client.done += status is not Status.CANCELLED
        client.results.append(Result(jid, status.value, error[:1000] if error else None, len(payload),
                                     ran, worker))
        client.outbox.extend(payload)

    def reply_refused(self, identity: bytes, jid: int, reason: str) -> None:
        """A job the master will not hold: an error result, never silent loss."""
        self.books.counts["refused"] += 1
        self.answer(identity, jid, Status.ERROR, (), reason)

    def forget(self, job: Job) -> Optional[ClientState]:
        """The master holds the job no more; return its client, if still here."""
        job.deadline = None
        client = self.books.clients.get(job.client)
        if client is not None and client.jobs.pop(job.jid, None) is not None:
            client.held_bytes -= job.size
        return client

    # -- ending jobs ---------------------------------------------------------
    def expire_jobs(self, now: float) -> None:
        for job in self.sched.expired(now):
            state = self.books.executors.get(job.executor) if job.executor else None
            if state is not None and self.monitor.on_lane(state):
                # Its executor runs a job from its lane (as its supervisor
                # said, within 0.1 s): this one waits behind it, not started.
                self.sched.start_clock(job, now)
                continue
            self.books.counts["timeouts"] += 1
            self.stop_job(job, Status.TIMEOUT, f"job ran past its timeout of {job.timeout:g} s")

    def stop_job(self, job: Job, status: Status, reason: str) -> None:
        """End a running job now: kill its executor, answer the client.

        A job still prefetched (not yet started) is only marked: killing the
        executor would kill the job ahead of it, maybe another client's.
        """
        state = self.books.executors.get(job.executor) if job.executor else None
        if state is not None and started(state, job):
            state.running.pop(job.tid, None)
            self.kill(state)
            reason += f" on {state.info.host} (executor pid {state.info.pid}, killed and replaced)"
            job.executor = None
        job.cancelled = True
        self.forget(job)
        self.reply(job, status, (), reason)

    def salvage(self, identity: bytes, kind: Optional[Kind], ids: list, reason: str, now: float) -> None:
        """Fail the jobs a refused SUBMIT or RESULT was about, so none hangs."""
        if identity in self.books.clients and kind is Kind.SUBMIT:
            for jid in ids:
                self.reply_refused(identity, jid, reason)
            return
        state = self.books.executors.get(identity)
        if state is None:
            return
        for tid in ids:
            job = self.finish_task(state, tid, now)
            if job is not None:
                self.forget(job)
                if not job.cancelled:
                    self.reply(job, Status.ERROR, (), f"its result was refused: {reason}")
