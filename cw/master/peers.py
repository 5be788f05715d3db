"""The master's peers: who is connected, who is alive, and what happens to
the jobs of an executor that is lost.

Every way a job's executor can be lost, and what the master does. The
worker's side of each row is in ``cw.worker.supervisor``; the master's is
here, and every row ends in ``Peers.requeue``: the executor's jobs go back
to the front of their clients' queues in order, or fail as LOST once one
has cost ``retries`` deaths.

=====================  ==============================  ======================  ================
How it is lost          Who notices, how                Master's handler        Charged to a job
=====================  ==============================  ======================  ================
crash: segfault,        its supervisor reaps it          ``on_died``, then       the job it ran:
``os._exit``, OOM,      (``check_children``) and sends   ``bury`` after          the executor's
a signal                DIED{executor, exitcode|signal,  min(0.5 s, heartbeat)   memfd word
                        job} at once                     (a result sent before   (``DIED.job``);
                                                         dying lands first)      none for a lane
                                                                                 job (SLOT_MARK)
silence: its host or    ``beat``: neither it nor its     ``beat`` ->             the first job in
the network gone, it    supervisor heard for             ``requeue(count)``      ``running``
or its whole worker     heartbeat * liveness seconds
frozen (SIGSTOP),       (a busy executor cannot beat;
supervisor killed       its supervisor vouches for it,
(executors die with     unless it says it is stopped)
it: PDEATHSIG)
drain: SIGTERM, SLURM   the supervisor: DRAIN (no new    ``on_drain``, then      none
time limit              tasks, lane withdrawn), then     ``on_depart``
                        DEPART once its executors have
                        exited, at ``--grace`` at most
kill: timeout, forced   the master itself: KILL to the   ``kill``; its DIED      none
cancel, client gone     supervisor, which kills the      then ``bury``
                        executor's process group         (``state.killed``)
leaves or restarts:     the executor: BYE, or READY      ``on_bye`` /            none
BYE, re-registration    again under the same identity    ``on_ready``
=====================  ==============================  ======================  ================

A busy executor whose supervisor still beats is vouched for, however long
its job; one its supervisor has said is stopped (SIGSTOP: ``"stopped"`` in
the HEARTBEAT's stats) for ``heartbeat * liveness`` is not, and is dropped
like a silent one once it has been silent that long too (its late
messages are then those of a stranger, which must register again). A
stop shorter than that costs nothing. A client that goes silent or
says BYE is dropped (``drop_client``): its jobs are cancelled, and a job of
it that has started is stopped by killing its executor.
"""
from __future__ import annotations

import logging
import platform
from collections import deque
from typing import Union

from ..errors import ProtocolError
from ..protocol import SLOT_MARK, Died, Heartbeat, Hello, Kind, Message, Ready, Status, beats_apart, versions
from .jobs import Jobs, started
from .leases import Leases
from .monitor import Monitor
from .resources import Pool
from .scheduler import Scheduler
from .state import Books, ClientState, ExecutorState

log = logging.getLogger(__name__)


class Peers:
    """Registration, liveness and loss of clients, supervisors and executors."""

    def __init__(self, books: Books, sched: Scheduler, leases: Leases, monitor: Monitor) -> None:
        self.books = books
        self.sched = sched
        self.leases = leases
        self.monitor = monitor
        self.jobs = Jobs(books, sched, leases, monitor, self.kill)
        self.dying: deque = deque()  # (when, executor identity, reason) of reported deaths
        self.warned_pythons: set = set()

    # -- registration ----------------------------------------------------------
    def touch(self, identity: bytes, now: float) -> bool:
        b = self.books
        peer = b.clients.get(identity) or b.executors.get(identity) or b.supervisors.get(identity)
        if peer is None:
            return False
        peer.last_seen = now
        return True

    def welcome(self, identity: bytes, beats: int = 1) -> None:
        b = self.books
        welcome = {"session": b.session, "heartbeat": float(b.heartbeat),
                   "max_message_size": b.limits.max_message_size, **versions()}
        if beats > 1:
            welcome["beats"] = beats
        b.send(identity, Message(Kind.WELCOME, welcome))

    def on_hello(self, identity: bytes, msg: Message, now: float) -> None:
        hello: Hello = msg.body
        client = self.books.clients.get(identity)
        if client is None:
            client = self.books.clients[identity] = ClientState(identity, hello, now)
            log.info("client %s:%s connected", hello.host, hello.pid)
        else:  # it reconnected, and dropped any lane it held
            self.leases.give_back(identity, tell=False)
        client.last_seen = now
        self.check_python(hello)
        self.welcome(identity)

    def check_python(self, peer: Union[Hello, Ready]) -> None:
        theirs = peer.python.split(".")[:2]
        if theirs != platform.python_version().split(".")[:2] and peer.python not in self.warned_pythons:
            self.warned_pythons.add(peer.python)
            log.warning("peer %s:%s runs Python %s, master %s",
                        peer.host, peer.pid, peer.python, platform.python_version())

    def on_ready(self, identity: bytes, msg: Message, now: float) -> None:
        ready: Ready = msg.body
        capacity = ready.capacity
        self.check_python(ready)
        if capacity == 0:
            old = self.books.supervisors.get(identity)
            if old is None:
                log.info("worker %s:%s registered", ready.host, ready.pid)
            sup = self.books.supervisors[identity] = ExecutorState(identity, ready, now, 0)
            sup.ends = None if ready.left is None else now + ready.left
            # Said again (the master was silent): what its running jobs hold stays held.
            sup.pool = old.pool if old is not None and old.pool is not None else \
                Pool(ready.cpus or ready.procs or 1, ready.mem or 0, (ready.gpus or "").split(","),
                     (ready.cpu_ids or "").split(","))
            return
        state = self.books.executors.get(identity)
        if state is not None:  # re-registered: whatever it ran is gone
            self.requeue(state, "executor re-registered")
        state = self.books.executors[identity] = ExecutorState(
            identity, ready, now, capacity, batch=capacity if ready.batch is None else ready.batch)
        if ready.liveness and ready.heartbeat and state.supervisor:  # vouched for: sparser beats
            b = self.books
            state.beats = beats_apart(min(ready.heartbeat * ready.liveness, b.heartbeat * b.liveness),
                                      max(ready.heartbeat, b.heartbeat))
        self.sched.offer(state)
        self.leases.add(state)
        self.welcome(identity, state.beats)  # the message size limit, how often to beat

    def on_heartbeat(self, identity: bytes, msg: Message, now: float) -> None:
        if not self.touch(identity, now):
            self.books.unknown(identity, "peer: send HELLO or READY first")
            return
        beat: Heartbeat = msg.body
        if beat.stats is not None and identity in self.books.supervisors:
            self.monitor.worker_stats(identity, beat.stats, now)  # ignored if malformed
        elif beat.lane is not None and identity in self.books.executors:  # jobs its lane ran
            state, ran = self.books.executors[identity], beat.lane
            state.done += ran
            for count in ("submitted", "done", "laned"):
                self.books.counts[count] += ran
            self.monitor.lane_failed(state, min(ran, beat.lane_failed))

    # -- the ways an executor is lost (the table above) ------------------------
    def on_died(self, identity: bytes, msg: Message, now: float) -> None:
        """Crash: its supervisor saw it die."""
        self.touch(identity, now)
        died: Died = msg.body
        try:
            executor = bytes.fromhex(died.executor)
        except ValueError as e:
            raise ProtocolError("DIED.executor is not hex") from e
        state = self.books.executors.get(executor)
        if state is not None:
            reason = f"signal {died.signal}" if died.signal else f"exit code {died.exitcode}"
            # DIED comes from the supervisor, a result from the executor's own
            # connection: wait a moment so a result it sent before dying
            # arrives first and the death is charged to the job it really ran.
            state.capacity = 0
            state.died_in = died.job
            self.dying.append((now + min(0.5, self.books.heartbeat), executor, reason))

    def bury(self, now: float) -> None:
        """Requeue the jobs of executors whose death was reported a moment ago."""
        while self.dying and self.dying[0][0] <= now:
            _, executor, reason = self.dying.popleft()
            state = self.books.executors.pop(executor, None)
            if state is not None:
                self.requeue(state, reason, count=True)

    def beat(self, now: float) -> None:
        """Silence: drop every peer not heard for ``heartbeat * liveness``
        (the master's own beats to the rest: ``cw.master.beats``)."""
        b = self.books
        limit = now - b.heartbeat * b.liveness
        for ident, client in list(b.clients.items()):
            if client.last_seen < limit:
                self.drop_client(b.clients.pop(ident), "missed its heartbeats")
        for ident, state in list(b.supervisors.items()):
            if state.last_seen < limit:
                del b.supervisors[ident]
                log.warning("worker %s:%s missed its heartbeats", state.info.host, state.info.pid)
        for ident, state in list(b.executors.items()):
            # A busy executor cannot heartbeat; its supervisor vouches for it, unless it has
            # said for the whole window that it is stopped.
            sup = b.supervisors.get(state.supervisor) if state.supervisor else None
            since = self.monitor.stopped_since(state)
            vouched = sup.last_seen if sup and (since is None or since > limit) else 0.0
            if max(state.last_seen, vouched) < limit:
                self.requeue(b.executors.pop(ident), "missed its heartbeats", count=True)

    def executors_of(self, supervisor: bytes) -> list[ExecutorState]:
        return [e for e in self.books.executors.values() if e.supervisor == supervisor]

    def on_drain(self, identity: bytes, msg: Message, now: float) -> None:
        """Drain: a worker is stopping; its executors finish what they run, take nothing new."""
        self.touch(identity, now)
        for state in self.executors_of(identity):
            state.capacity = 0
            self.leases.withdraw(state)
        log.info("worker %s draining", identity.hex()[:16])

    def on_depart(self, identity: bytes, msg: Message, now: float) -> None:
        """Drain, its end: the worker left on purpose; its jobs go back, no retry counted."""
        for state in self.executors_of(identity):
            self.requeue(self.books.executors.pop(state.identity), "its worker departed")
        sup = self.books.supervisors.pop(identity, None)
        if sup is not None:
            log.info("worker %s:%s departed", sup.info.host, sup.info.pid)

    def on_bye(self, identity: bytes, msg: Message, now: float) -> None:
        b = self.books
        if identity in b.clients:
            self.drop_client(b.clients.pop(identity), "said goodbye")
        elif identity in b.executors:
            self.requeue(b.executors.pop(identity), "executor left")
        elif b.supervisors.pop(identity, None) is not None:
            log.info("worker %s left", identity.hex()[:16])

    def kill(self, state: ExecutorState) -> None:
        """Kill: ask an executor's supervisor to kill it; it takes no task meanwhile."""
        state.capacity = 0
        state.killed = True  # its death is ours: no job counts it
        self.leases.withdraw(state)
        if state.supervisor is not None and state.supervisor in self.books.supervisors:
            self.books.counts["killed"] += 1
            self.books.send(state.supervisor, Message(Kind.KILL, {"executor": state.identity.hex()}))
        else:
            # No one to kill it: forget it, so its next message makes it register again.
            log.warning("cannot kill executor %s:%s: its supervisor is unknown",
                        state.info.host, state.info.pid)
            self.requeue(self.books.executors.pop(state.identity), "its supervisor is unknown")

    def requeue(self, state: ExecutorState, reason: str, count: bool = False) -> None:
        """Put a lost executor's jobs back at the front of their queues, in order.

        With ``count``, the death counts against the job it was running, unless
        the master killed it: the one its supervisor saw it run, else the first
        in ``running`` (an executor runs its tasks in arrival order; the rest
        were prefetched and never started, or finished with results unsent).
        """
        self.leases.withdraw(state)
        held = list(state.running.values())
        culprit = (None if state.died_in == SLOT_MARK  # it died running a lane's job
                   else state.died_in if state.died_in in state.running else next(iter(state.running), None))
        for job in reversed(held):
            job.executor = None
            job.deadline = None
            client = self.books.clients.get(job.client)
            if job.cancelled or client is None:
                self.jobs.forget(job)
                continue
            job.deaths += count and job.tid == culprit and not state.killed
            if job.deaths > job.retries:
                self.jobs.forget(job)
                info = state.info
                error = (f"worker {info.host} pid {info.pid} died running this job "
                         f"{job.deaths} times ({reason}); raise retries= to allow more")
                self.jobs.reply(job, Status.LOST, (), error)
                continue
            self.books.counts["requeued"] += 1
            self.sched.requeue(client, job)
        if held:
            log.warning("executor %s:%s gone (%s): %d job(s) requeued",
                        state.info.host, state.info.pid, reason, len(held))
        state.running = {}

    def drop_client(self, client: ClientState, reason: str) -> None:
        """A client gone: its jobs are cancelled; one that has started is stopped."""
        log.info("client %s:%s %s", client.info.host, client.info.pid, reason)
        for job in list(client.jobs.values()):
            job.cancelled = True
            job.deadline = None
            state = self.books.executors.get(job.executor) if job.executor else None
            if state is not None and started(state, job):  # stop paying for it
                state.running.pop(job.tid, None)
                self.kill(state)
            elif state is not None:  # prefetched: its executor drops it unbegun
                self.books.send(state.identity, Message(Kind.CANCEL, {"id": job.tid}))
        client.jobs.clear()
        self.leases.leave(client.identity)
        self.sched.drop(client)
