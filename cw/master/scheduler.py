"""Which job runs where, next: the master's scheduler.

::

    SUBMIT ─► enqueue(): the job joins its client's queue (first in, first
              out); the client joins the clients with queued jobs, which
              take turns: ``fresh`` (none of its jobs out on an executor),
              served first, else ``ready``
    dispatch(): executors with room wait in ``free``; each takes the
              clients' oldest jobs in turns (``take``), up to its
              ``window``: its capacity, more while its jobs are short. A
              job waits on an executor behind another (prefetched) only
              when both are of clients whose jobs are known to be short
              ──TASK──► one message per executor per turn (``send_task``)
    dispatch_express(): a worker's spare executor (``express``) takes one job
              of a client whose jobs are short and that has none out, once
              no other executor could: it runs now, not after another's
              long job
    announce_started(): STARTED for the jobs still running a moment later
    expired(): running jobs past their timeout, from a heap of deadlines

No step scans all executors or all queued jobs: ``fresh``, ``ready`` and
``free`` are queues, and a dispatch pops from their fronts. The master owns the clients
and executors (``cw.master.state``) and decides what a death, a cancel or a
timeout does; the scheduler reads them and sends through the master.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Callable, Iterator, Optional

from ..protocol import Kind, Message
from .resources import Placement
from .state import ClientState, ExecutorState, Job, function_key

# An executor holds jobs beyond its capacity only while they are short: about
# this many seconds of work, and no more than its share of the queue. It must
# outlast the executor's holding of short jobs' results (``outbox.HOLD_SECONDS``,
# 2 ms) and the round trip of the TASK that refills it: at 2 ms an executor of
# 1 ms jobs waited for work 5% of its time (85% efficiency, 93% at 5 ms).
BATCH_SECONDS = 0.005
# Jobs that together run in less than a message costs the master to send
# go in one TASK, past the executor's window: sent one or two to a message,
# to idle executors, they would take longer to leave than to run. So a
# thousand idle executors do not split a stream of no-op jobs into a
# message each (issue 26's scale suite: 10,000 executors).
MESSAGE_SECONDS = 0.0002
TASK_BYTES = 1 << 20  # a TASK with several jobs stays under this
# Prefetch pays for short jobs only: it saves a job one round trip to the
# master, and costs a job of another client that comes meanwhile the whole
# length of the job sent ahead of it. So a job goes to an executor that holds
# others (and others go behind it) only when its client's recent jobs ran
# this long or less (``ClientState.cost``); a client's first jobs, before
# any result, wait for an executor with nothing to do.
PREFETCH_SECONDS = 0.02
# A spare executor looks this far down the line of clients with nothing out
# for one whose jobs are short: the line is short, and a dispatch never scans.
EXPRESS_LOOK = 8
# A worker near its time limit looks this deep into a client's queue, past a
# job it could not finish, for one it can.
LOOKAHEAD = 64
UNPARK_SECONDS = 1.0
# A job still running this long after it started (``Starts``) is announced
# to its client (STARTED); a quicker one names its worker in its result.
ANNOUNCE_AFTER = 0.005


class Scheduler:
    """The master's queues of jobs and of executors with room; see above."""

    def __init__(self, clients: dict[bytes, ClientState], executors: dict[bytes, ExecutorState],
                 send: Callable[[bytes, Message], None],
                 supervisors: Optional[dict[bytes, ExecutorState]] = None,
                 parked: Optional[set[bytes]] = None) -> None:
        self.clients = clients
        self.executors = executors
        self.supervisors = {} if supervisors is None else supervisors
        self.send = send
        self.parked: set[bytes] = set() if parked is None else parked  # their workers end too soon
        self.place = Placement(executors, self.supervisors)  # whether a job suits an executor
        self.unpark_at = 0.0  # they look again at least this often (UNPARK_SECONDS): fronts move
        self.fresh: deque[bytes] = deque()  # clients with queued jobs and none out: first, in turns
        self.ready: deque[bytes] = deque()  # the other clients with queued jobs, in turns
        self.free: deque[bytes] = deque()  # executors that may have room for tasks
        self.express: deque[bytes] = deque()  # workers' spare executors with nothing to do
        self.shared: list[ExecutorState] = []  # lent executors (cw.lanes) just given others' jobs
        self.queued = 0  # jobs in clients' queues (cancelled ones included until popped)
        self.starts = Starts(executors)  # jobs started: their timeouts, their STARTED
        self.start_clock, self.expired = self.starts.clocks.start, self.starts.clocks.expired
        self.next_announcement = self.starts.next_due

    # -- queues -----------------------------------------------------------
    def enqueue(self, client: ClientState, job: Job) -> None:
        """A new job, behind its client's others."""
        client.queue.append(job)
        self.queued += 1
        self.mark_ready(client)
        self.unpark()

    def requeue(self, client: ClientState, job: Job) -> None:
        """A job back from a gone executor: first in its client's line."""
        client.queue.appendleft(job)
        self.queued += 1
        self.mark_ready(client)
        self.unpark()

    def unpark(self) -> None:
        """New work: executors that found nothing short enough for them look again."""
        if self.parked:
            for identity in self.parked:
                state = self.executors.get(identity)
                if state is not None:
                    self.offer(state)
            self.parked.clear()

    def drop(self, client: ClientState) -> None:
        """A client gone: its queued jobs with it."""
        self.queued -= len(client.queue)
        client.queue.clear()
        self.unpark()

    def mark_ready(self, client: ClientState) -> None:
        """A client with queued jobs joins the turns, once: before the clients
        that have jobs out on executors if it has none, so that a client
        waiting for each result is not served after every busy one."""
        if not client.in_ready:
            client.in_ready = True
            # Its queue holds no cancelled job here (that leaves it only when
            # popped, and a client leaves the turns once its queue is empty).
            nothing_out = len(client.jobs) <= len(client.queue)
            (self.fresh if nothing_out else self.ready).append(client.identity)

    def offer(self, state: ExecutorState) -> None:
        """An executor may have room: it joins the line of those that take tasks."""
        if not state.offered:
            state.offered = True
            (self.express if state.info.express else self.free).append(state.identity)

    # -- dispatch ---------------------------------------------------------
    def window(self, state: ExecutorState) -> int:
        """How many tasks an executor may hold: its capacity, or more while
        its jobs are short and the queue is long (fewer, bigger messages)."""
        if state.cost is None or state.batch <= state.capacity or state.capacity < 2:
            return state.capacity
        share = self.queued // len(self.executors)
        return state.capacity + min(state.batch - state.capacity, share,
                                    int(BATCH_SECONDS / max(state.cost, 1e-6)))

    def dispatch(self, now: float) -> None:
        """Fill executors with room, taking the clients' jobs in turns."""
        if self.parked and now >= self.unpark_at:
            self.unpark_at = now + UNPARK_SECONDS
            self.unpark()
        while self.free and (self.fresh or self.ready):
            state = self.executors.get(self.free.popleft())
            if state is None:
                continue  # gone since it was offered
            state.offered = False
            room = self.window(state) - len(state.running)
            if room <= 0 or not self.may_wait_behind(state):
                continue  # full, or busy with a long job: a result offers it again
            jobs, more = self.take(room, state, now)
            if not jobs and not more and not state.running:
                self.parked.add(state.identity)  # its worker ends before any job here would
            self.assign(state, jobs, now)
            if more and len(state.running) < self.window(state):
                self.offer(state)  # the queue ran dry (or the message grew big) before it was full
        if self.express and (self.fresh or self.ready):
            self.dispatch_express(now)

    def dispatch_express(self, now: float) -> None:
        """Spare executors take the next job of a client that has none out and
        whose jobs are short (looking ``EXPRESS_LOOK`` deep into each line of
        clients): every other executor is busy, maybe for long, and its
        turn is now."""
        for line in (self.fresh, self.ready):
            look = 0
            while look < min(EXPRESS_LOOK, len(line)) and (state := self.spare()) is not None:
                client = self.clients.get(line[look])
                if client is not None and not self.for_spare(client):
                    look += 1
                    continue
                del line[look]
                job = None if client is None else self.next_job(client)
                if job is None:
                    if client is not None:
                        client.in_ready = False
                    continue
                self.ready.append(client.identity)  # its next job takes its turn with the others
                if job.expected is not None or job.needs is not None:  # behind cancelled ones: suits() judges
                    client.queue.appendleft(job)
                    self.queued += 1
                    continue
                self.express.popleft()
                state.offered = False
                self.assign(state, [job], now)

    def for_spare(self, client: ClientState) -> bool:
        """Whether a spare may take a client's next job: its jobs are short, none
        is out, and that one has no ``expected`` length (``fits`` judges those)."""
        return (self.short(client) and len(client.jobs) <= len(client.queue) and bool(client.queue)
                and client.queue[0].expected is None and client.queue[0].needs is None)

    def spare(self) -> Optional[ExecutorState]:
        """The first spare executor free to take a job; others leave the line."""
        while self.express:
            state = self.executors.get(self.express[0])
            if state is not None and state.capacity and not state.running:
                return state
            self.express.popleft()
            if state is not None:
                state.offered = False
        return None

    def assign(self, state: ExecutorState, jobs: list[Job], now: float) -> None:
        """Send ``jobs`` to an executor, behind what it holds."""
        for job in jobs:
            job.executor = state.identity
            job.announced = False
            if job.needs is not None:
                pool = self.place.pool(state)
                job.gpus = None if pool is None else pool.take(job, state)
            if not state.running:  # it starts now (one prefetched: once it is first, ``started``)
                self.starts.begin(job, state.identity, now)
            state.running[job.tid] = job
        if jobs:
            self.send_task(state, jobs)
            if state.leased_to is not None and any(job.client != state.leased_to for job in jobs):
                self.shared.append(state)  # its lane's next jobs would wait behind these

    def short(self, client: Optional[ClientState]) -> bool:
        """Whether a client's jobs are known to be short: they may wait ahead."""
        return client is not None and client.cost is not None and client.cost <= PREFETCH_SECONDS

    def may_wait_behind(self, state: ExecutorState) -> bool:
        """Whether a job sent now may wait behind what the executor holds:
        only behind short jobs (a long one is alone, the first and last)."""
        if not state.running:
            return True
        jobs = state.running.values()
        return self.short(self.clients.get(next(iter(jobs)).client)) \
            and self.short(self.clients.get(next(reversed(jobs)).client))

    def take(self, room: int, state: ExecutorState, now: float) -> tuple[list[Job], bool]:
        """Up to ``room`` queued jobs for ``state`` (to its batch while their
        costs add up to under ``MESSAGE_SECONDS``: jobs of the very function
        whose cost is known), clients in turns (the ``fresh`` first); a job
        that would wait behind another goes only if both clients' jobs are
        short, one with an ``expected`` length only if its worker has that
        long left (``fits``). Also says whether the executor may take more now
        (the queue ran dry, or the message grew big), not only once a result comes."""
        behind, most = bool(state.running), max(room, state.batch - len(state.running))
        jobs: list[Job] = []
        size = skipped = cheap = 0
        while (len(jobs) < room or len(jobs) < most and cheap < MESSAGE_SECONDS) and size < TASK_BYTES:
            line = self.fresh or self.ready
            if not line:
                return jobs, True
            client = self.clients.get(line[0])
            if client is None:
                line.popleft()
                continue  # dropped since it queued
            short = self.short(client)
            if (behind or jobs) and not short or len(jobs) >= room and not _costed(client):
                return jobs, False  # it waits for an executor with nothing ahead of it
            line.popleft()
            job = self.next_job(client)
            if job is None:
                client.in_ready = False
                continue
            self.ready.append(client.identity)  # round-robin: back of the line
            job = self.fitting(client, job, state, now, not behind and not jobs)
            if job is None:
                skipped += 1
                if skipped >= len(self.fresh) + len(self.ready):
                    return jobs, False  # no client has a job this worker could finish
                continue
            jobs.append(job)
            size += job.size
            if not short or job.needs is not None:
                return jobs, False  # nothing waits behind a job not known to be short, or holding resources
            cheap += client.cost  # type: ignore[operator]
        return jobs, True

    def fitting(self, client: ClientState, job: Job, state: ExecutorState, now: float,
                idle: bool) -> Optional[Job]:
        """``job`` if it ``suits`` the executor; else (``job`` back in front)
        one that does, ``LOOKAHEAD`` deep, or None. Nothing overtakes a job
        that waits for resources this worker has but others hold."""
        if self.place.suits(state, job, now, idle):
            return job
        client.queue.appendleft(job)  # first in its line, for a worker with time enough
        self.queued += 1
        pool = self.place.pool(state) if job.needs is not None else None
        if pool is not None and pool.could_ever(job.needs):  # type: ignore[arg-type]
            return None
        for i, job in enumerate(itertools.islice(client.queue, 1, LOOKAHEAD), 1):
            if not job.cancelled and self.place.suits(state, job, now, idle):
                del client.queue[i]
                self.queued -= 1
                return job
        return None

    def next_job(self, client: ClientState) -> Optional[Job]:
        """A client's oldest queued job; cancelled ones leave the queue here."""
        while client.queue:
            job = client.queue.popleft()
            self.queued -= 1
            if not job.cancelled:
                return job
        return None

    def send_task(self, state: ExecutorState, jobs: list[Job]) -> None:
        """One TASK; neighbours that share a context (the same client, as a
        rule) share its frame: see ``job_runs``."""
        header: dict = {"ids": [job.tid for job in jobs]}
        frames: list = []
        runs: list[int] = []
        context = None
        for job in jobs:
            if runs and job.payload[0] == context:
                runs[-1] += 1
                frames += job.payload[1:]
            else:
                context = job.payload[0]
                runs.append(1)
                frames += job.payload
        if len(runs) > 1:
            header["contexts"] = runs
        if jobs[0].gpus is not None:  # a job with resources goes alone
            header["gpus"] = jobs[0].gpus
        if jobs[0].cpu_ids is not None:
            header["cpus"] = jobs[0].cpu_ids
        if len(frames) != len(jobs) + len(runs):  # some job has out-of-band buffers
            header["frames"] = [len(job.payload) - 1 for job in jobs]
        self.send(state.identity, Message(Kind.TASK, header, tuple(frames)))

    # -- after dispatch ---------------------------------------------------
    def started(self, state: ExecutorState, now: float) -> None:
        """The first job an executor holds starts now: the one before it ended."""
        self.starts.begin(next(iter(state.running.values())), state.identity, now)

    def announce_started(self, now: float) -> None:
        """STARTED, per client and worker, for the jobs still running
        ``ANNOUNCE_AFTER`` seconds after they started (``Starts.due``)."""
        for (identity, worker), ids in self.starts.due(now).items():
            if identity in self.clients:
                # Chunked, so no header outgrows what a peer accepts (64 KiB).
                for i in range(0, len(ids), 2000):
                    self.send(identity, Message(Kind.STARTED, {"ids": ids[i:i + 2000], "worker": worker}))


def _costed(client: ClientState) -> bool:
    """Whether a client's next job calls the function its cost was learnt
    from (so may go past the window): a sweep of no-op jobs, then one of
    long ones, is not taken for more no-ops before a result says so."""
    return bool(client.queue) and function_key(client.queue[0].payload[1]) == client.function()


class Starts:
    """Jobs as they start on their executors. A job starts when it goes out
    to an idle executor, or, prefetched behind another, when the result of
    the job before it comes (its executor runs its jobs in the order sent).
    Its timeout runs from then (``Deadlines``), and if it still runs
    ``ANNOUNCE_AFTER`` later its client hears STARTED; quicker ones name
    their worker in their result instead, which saves a message a job.
    (Counted from when it went out, a stream of 1 ms jobs had a STARTED for
    one job in four: those that had waited their turn.)"""

    def __init__(self, executors: dict[bytes, ExecutorState]) -> None:
        self.executors = executors
        self.clocks = Deadlines()  # running jobs with a timeout
        self.announce: deque = deque()  # (when, job, executor identity): STARTED due, in order

    def begin(self, job: Job, executor: bytes, now: float) -> None:
        self.announce.append((now + ANNOUNCE_AFTER, job, executor))
        if job.timeout is not None and job.deadline is None:
            self.clocks.start(job, now)

    def due(self, now: float) -> dict[tuple[bytes, str], list[int]]:
        """The ids of jobs started ``ANNOUNCE_AFTER`` ago and running still,
        by client and worker; each is announced once."""
        due: dict[tuple[bytes, str], list[int]] = {}
        while self.announce and self.announce[0][0] <= now:
            _, job, executor = self.announce.popleft()
            state = self.executors.get(executor)
            if job.announced or job.cancelled or job.executor != executor or state is None \
                    or next(iter(state.running), None) != job.tid:
                continue  # finished, gone, sent elsewhere since, or not the one running there
            job.announced = True
            due.setdefault((job.client, state.name), []).append(job.jid)
        return due

    def next_due(self) -> Optional[float]:
        """When the next STARTED may be due."""
        return self.announce[0][0] if self.announce else None


class Deadlines:
    """A heap of (deadline, tid, job) of running jobs with a timeout; an entry
    whose job's deadline has changed or gone is stale and skipped."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Job]] = []
        self.live = 0  # entries that were not stale at the last compaction

    def start(self, job: Job, now: float) -> None:
        """A job with a timeout starts running: its deadline counts from now."""
        assert job.timeout is not None
        job.deadline = now + job.timeout
        heapq.heappush(self.heap, (job.deadline, job.tid, job))

    def expired(self, now: float) -> Iterator[Job]:
        """Running jobs past their deadline, one at a time: each is checked
        when its turn comes, after the caller dealt with the one before."""
        if len(self.heap) > 2 * self.live + 1000:  # mostly jobs long finished
            self.heap = [e for e in self.heap if e[2].deadline == e[0]]
            heapq.heapify(self.heap)
            self.live = len(self.heap)
        while self.heap and self.heap[0][0] <= now:
            deadline, _, job = heapq.heappop(self.heap)
            if job.executor is not None and job.deadline == deadline:
                yield job
