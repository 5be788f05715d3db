"""The master: routes jobs first-in, first-out from clients to executors.

::

    client ──SUBMIT──► ROUTER ──► Job appended to ClientState.queue
                         │        (clients with queued jobs take turns)
                         ▼
    Scheduler.dispatch() (cw.scheduler): executors with room take the ready
                clients' oldest jobs in turns ──TASK──► one message per executor
                per turn, several jobs when its jobs are short
    executor ──RESULT──► master: Jobs leave ExecutorState.running ──RESULTS──► client
    supervisor ──DIED──► master: the dead executor's jobs go back to the front of
                         their client's queue, or fail as lost after `retries` deaths
    master ──KILL──► supervisor: a job past its timeout, force-cancelled, or of a
                         client gone: its executor is killed and replaced
    supervisor ──DRAIN, DEPART──► master: no new tasks; then its executors' jobs are
                         requeued without counting a retry (SIGTERM, SLURM time limit)

One thread, one socket, one poll loop, no locks. Payload frames are routed as
opaque bytes: nothing a peer sends is ever unpickled here. ``step(now)`` is
one turn of the loop; ``run()`` only repeats it. Heartbeats go both ways; a
peer silent for ``heartbeat * liveness`` seconds is presumed gone. Executors
busy with a long job cannot heartbeat: their supervisor speaks for them.
"""
from __future__ import annotations

import logging
import math
import platform
import time
import uuid
from collections import deque
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Optional

import zmq

from .. import shm
from ..errors import ProtocolError
from ..protocol import (
    COPY_BELOW,
    NOBLOCK,
    SLOT_MARK,
    STATUSES,
    ErrorCode,
    Kind,
    Message,
    Status,
    job_runs,
    legacy_layout,
    readable,
    recv_frames,
    send_frames,
    versions,
)
from ..security import Keys, ZapHandler, apply_server
from .leases import Leases
from .monitor import Monitor
from .scheduler import Scheduler
from .state import ClientState, ExecutorState, Job, Limits, salvage_ids

log = logging.getLogger(__name__)

DEFAULT_RETRIES = 2
RECV_BATCH = 1000  # messages handled per step before dispatching
# After a turn that moved jobs, with none waiting in the queue, poll this long
# before sleeping: the next message (the result of the task just sent, a
# waiting client's next submit) is likely that close, and a thread that sleeps
# pays for its wake-up. On a 2-core VM this took a sequential round trip from
# 1.41 to 1.19 ms; spinning in the executors or the client instead slowed it
# (they share the cores). With jobs queued, executors are busy and need the CPU.
SPIN_SECONDS = 0.0005


def _chunks(results: list, budget: int = 40_000) -> Iterator[list]:
    """RESULTS entries in runs whose JSON stays under ``budget`` bytes."""
    chunk: list = []
    size = 0
    for entry in results:
        cost = 40 + (len(entry[2]) * 2 if entry[2] else 0)  # ids, status; escaped text
        if len(entry) > 5:
            cost += 2 * len(entry[5])  # the worker's name
        if chunk and size + cost > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += cost
    if chunk:
        yield chunk


def _router(host: str, port: int, keys: Optional[Keys], max_message_size: int) -> tuple[zmq.Socket, int]:
    """The master's bound ROUTER and its port (``port`` 0: a free one)."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer takes its name back
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # Clients learn the limit at WELCOME and refuse bigger jobs themselves;
    # only a hostile peer goes past it, and libzmq cuts that connection
    # before buffering the frame.
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_size + (1 << 20))
    try:
        apply_server(sock, keys)
        if port == 0:
            return sock, sock.bind_to_random_port(f"tcp://{host}")
        sock.bind(f"tcp://{host}:{port}")
        return sock, port
    except BaseException:  # the port is taken, say: no socket left behind
        sock.close(linger=0)
        raise


class Master:
    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 5494,
        *,
        heartbeat: float = 1.0,
        liveness: int = 10,
        clock: Callable[[], float] = time.monotonic,
        keys: Optional[Keys] = None,
        cluster_dir: Optional[Path] = None,
        limits: Limits = Limits(),
        spin: float = SPIN_SECONDS,
    ) -> None:
        self.clock = clock
        self.spin = spin
        self.moved = False  # a submit or a result came since the last blocking wait
        self.limits = limits
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.session = uuid.uuid4().hex
        self.started_at = time.time()
        self.sock, self.port = _router(host, port, keys, limits.max_message_size)
        self.host = host
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.zap: Optional[ZapHandler] = None
        if keys is not None:
            assert cluster_dir is not None, "a secure master needs its cluster directory"
            self.zap = ZapHandler(cluster_dir)
            self.poller.register(self.zap.sock, zmq.POLLIN)
        else:
            log.warning("CURVE is OFF (--insecure): anyone who can reach port %d can run code "
                        "as this user; use only on an isolated, trusted network", self.port)
        self.warned_pythons: set = set()
        self.clients: dict[bytes, ClientState] = {}
        self.executors: dict[bytes, ExecutorState] = {}
        self.supervisors: dict[bytes, ExecutorState] = {}
        self.sched = Scheduler(self.clients, self.executors, self.send)
        self.leases = Leases(self.send)  # executors' lanes lent to clients of their host
        self.dying: deque = deque()  # (when, executor identity, reason) of reported deaths
        self.next_tid = 1
        self.next_beat = 0.0
        self.stopping = False
        self.malformed: dict[bytes, int] = {}
        self.monitor = Monitor(clock())  # throughput, job ages, worker CPU/RSS: for `cw status`
        self.counts = {"submitted": 0, "done": 0, "lost": 0, "requeued": 0, "malformed": 0,
                       "refused": 0, "duplicates": 0, "timeouts": 0, "killed": 0,
                       "unknown_peer": 0, "unknown_job": 0, "laned": 0}
        self.handlers = {
            Kind.HELLO: self.on_hello,
            Kind.SUBMIT: self.on_submit,
            Kind.CANCEL: self.on_cancel,
            Kind.READY: self.on_ready,
            Kind.RESULT: self.on_result,
            Kind.DIED: self.on_died,
            Kind.DRAIN: self.on_drain,
            Kind.DEPART: self.on_depart,
            Kind.HEARTBEAT: self.on_heartbeat,
            Kind.BYE: self.on_bye,
            Kind.STATUS: self.on_status,
        }

    # -- the loop ---------------------------------------------------------
    def run(self) -> None:
        while not self.stopping:
            timeout = min(self.heartbeat, 0.5)
            due = self.sched.next_announcement()
            if due is not None:  # wake up to say STARTED in time
                timeout = min(timeout, max(0.0, due - self.clock()))
            self.step(timeout)

    def step(self, timeout: float = 0.0, now: Optional[float] = None) -> None:
        """One turn: receive what is there, dispatch, heartbeat, purge."""
        events = self.wait(timeout)
        if self.zap is not None and self.zap.sock in events:
            while self.zap.sock.poll(0):
                self.zap.handle()
        if self.sock in events:  # a message waits: the poll asked the socket
            for _ in range(RECV_BATCH):
                try:
                    frames = recv_frames(self.sock, NOBLOCK)
                except zmq.Again:
                    break
                self.handle(frames, self.clock() if now is None else now)
                # Asked before the next: ending on zmq.Again costs twice as much.
                if not readable(self.sock):
                    break
        now = self.clock() if now is None else now
        self.bury(now)
        self.sched.dispatch(now)
        if self.sched.queued and self.leases.held:  # jobs wait: no executor is anyone's own
            self.leases.recall()
        elif self.sched.shared:
            for state in self.sched.shared:
                if state.leased_to is not None:
                    self.leases.give_back(state.leased_to, tell=True)
        self.sched.shared.clear()
        self.expire_jobs(now)
        self.sched.announce_started(now)
        self.flush()
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat
            self.beat(now)
        self.monitor.tick(self, now)

    def wait(self, timeout: float) -> dict:
        """Poll for up to ``timeout`` seconds; if jobs moved since the master's
        last blocking wait and none is queued, spin for up to ``spin`` seconds first."""
        if timeout <= 0:
            return dict(self.poller.poll(0))
        if self.moved and not self.sched.queued:
            until = time.perf_counter() + min(self.spin, timeout)
            while True:
                events = dict(self.poller.poll(0))
                if events:
                    return events
                if time.perf_counter() >= until:
                    break
        self.moved = False  # a blocking wait: traffic from now on counts anew
        return dict(self.poller.poll(math.ceil(timeout * 1000)))

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.zap is not None:
            self.zap.close()

    # -- receiving --------------------------------------------------------
    def handle(self, frames: list, now: float) -> None:
        identity = frames[0].bytes
        try:
            size = sum(map(len, frames[1:]))
            if size > self.limits.max_message_size:
                raise ProtocolError(f"message of {size} bytes exceeds --max-message-size "
                                    f"{self.limits.max_message_size}")
            msg = Message.from_frames(frames[1:])
            handler = self.handlers.get(msg.kind)
            if handler is None:
                raise ProtocolError(f"{msg.kind.name} is not a message for the master")
            handler(identity, msg, now)
        except ProtocolError as e:
            self.salvage(identity, frames[1:], str(e))
            self.refuse(identity, str(e), legacy=legacy_layout(frames[1:]))
        except Exception as e:  # a bug must cost one message, never the master
            log.exception("error handling a message from peer %s", identity.hex()[:16])
            self.refuse(identity, f"internal error: {type(e).__name__}")

    def salvage(self, identity: bytes, frames: list, reason: str) -> None:
        """Fail the jobs a refused SUBMIT or RESULT was about, so none hangs."""
        kind, ids = salvage_ids(frames)
        if not ids:
            return
        if identity in self.clients and kind is Kind.SUBMIT:
            for cid in ids:
                self.reply_refused(identity, cid, reason)
            return
        state = self.executors.get(identity)
        if state is None:
            return
        for tid in ids:
            job = self.finish_task(state, tid, self.clock())
            if job is not None:
                self.forget(job)
                if not job.cancelled:
                    self.reply(job, Status.ERROR, (), f"its result was refused: {reason}")

    def refuse(self, identity: bytes, reason: str, jid: Optional[int] = None,
               code: ErrorCode = ErrorCode.MALFORMED, legacy: bool = False) -> None:
        """Count and drop a bad message; tell the peer why (``legacy``: in the
        layout of protocols 1 to 3, which it speaks); log once per peer."""
        self.counts[code.value.replace("-", "_")] += 1
        if identity not in self.malformed:
            if len(self.malformed) > 10_000:
                self.malformed.clear()
            level = logging.WARNING if code is ErrorCode.MALFORMED else logging.INFO
            log.log(level, "dropped message from peer %s: %s", identity.hex()[:16], reason)
        self.malformed[identity] = self.malformed.get(identity, 0) + 1
        header: dict = {"error": reason[:1000], "code": code.value}
        if jid is not None:
            header["id"] = jid
        self.send(identity, Message(Kind.ERROR, header), legacy)

    def send(self, identity: bytes, msg: Message, legacy: bool = False) -> None:
        try:
            send_frames(self.sock, [identity, *(msg.to_legacy_frames() if legacy else msg.to_frames())])
        except zmq.ZMQError as e:  # peer gone: it will reconnect or be purged
            log.debug("send to %s failed: %s", identity.hex()[:16], e)

    def touch(self, identity: bytes, now: float) -> bool:
        peer = (
            self.clients.get(identity)
            or self.executors.get(identity)
            or self.supervisors.get(identity)
        )
        if peer is None:
            return False
        peer.last_seen = now
        return True

    def welcome(self, identity: bytes) -> None:
        welcome = {"session": self.session, "heartbeat": float(self.heartbeat),
                   "max_message_size": self.limits.max_message_size, **versions()}
        self.send(identity, Message(Kind.WELCOME, welcome))

    def on_hello(self, identity: bytes, msg: Message, now: float) -> None:
        client = self.clients.get(identity)
        if client is None:
            client = self.clients[identity] = ClientState(identity, msg.header, now)
            log.info("client %s:%s connected", msg.header["host"], msg.header["pid"])
        else:  # it reconnected, and dropped any lane it held
            self.leases.give_back(identity, tell=False)
        client.last_seen = now
        self.check_python(msg.header)
        self.welcome(identity)

    def check_python(self, header: dict) -> None:
        theirs = header["python"].split(".")[:2]
        if theirs != platform.python_version().split(".")[:2] and \
                header["python"] not in self.warned_pythons:
            self.warned_pythons.add(header["python"])
            log.warning(
                "peer %s:%s runs Python %s, master %s",
                header["host"], header["pid"], header["python"], platform.python_version(),
            )

    def on_submit(self, identity: bytes, msg: Message, now: float) -> None:
        client = self.clients.get(identity)
        if client is None:
            self.refuse(identity, "unknown client: send HELLO first", None, ErrorCode.UNKNOWN_PEER)
            return
        client.last_seen = now
        self.moved = True
        retries = msg.header.get("retries", DEFAULT_RETRIES)
        timeout = msg.header.get("timeout")
        for frame, run in job_runs(msg.header, msg.payload):
            context = bytes(frame)  # a Frame would pin its receive buffer while jobs wait
            for cid, frames in run:
                if cid in client.jobs:
                    continue  # a resubmission of a job we hold: keep the first
                # Small frames are copied out of their zmq.Frame, which costs far
                # more memory than the bytes while a million jobs wait in the queue.
                payload = (context, *(f.bytes if len(f) < COPY_BELOW else f for f in frames))
                size = sum(map(len, payload))
                refusal = self.limits.check(len(client.jobs), client.held_bytes, size)
                if refusal:
                    self.reply_refused(identity, cid, refusal)
                    continue
                job = Job(self.next_tid, identity, cid, payload, retries, size, timeout)
                client.held_bytes += size
                self.next_tid += 1
                client.jobs[cid] = job
                self.sched.enqueue(client, job)
                self.counts["submitted"] += 1
        # A client with one job in flight and nothing else queued: a caller
        # that waits for each result. Its next jobs may take a lane.
        if len(client.jobs) == 1 and self.sched.queued <= 1 and self.leases.shelf:
            self.leases.lend(client)

    def on_cancel(self, identity: bytes, msg: Message, now: float) -> None:
        client = self.clients.get(identity)
        if client is None:
            self.refuse(identity, "unknown client: send HELLO first", None, ErrorCode.UNKNOWN_PEER)
            return
        if "lane" in msg.header:  # a job it sent down a lane, to stop by force
            self.kill_lane(client, msg.header["lane"], msg.header.get("force", False))
            return
        job = client.jobs.get(msg.header["id"])
        if job is None:  # finished meanwhile (the client drops the late result), or never held
            self.refuse(identity, "no such job", msg.header["id"], ErrorCode.UNKNOWN_JOB)
            return
        client.last_seen = now
        if job.executor is None:  # still queued: dropped from the queue lazily
            job.cancelled = True
            self.forget(job)
            self.reply(job, Status.CANCELLED)
        elif msg.header.get("force"):
            self.stop_job(job, Status.CANCELLED, "cancelled while running (force=True)")
        else:
            job.cancelled = True  # it runs on, but its result goes nowhere

    def on_ready(self, identity: bytes, msg: Message, now: float) -> None:
        capacity = msg.header["capacity"]
        self.check_python(msg.header)
        if capacity == 0:
            if identity not in self.supervisors:
                log.info("worker %s:%s registered", msg.header["host"], msg.header["pid"])
            self.supervisors[identity] = ExecutorState(identity, msg.header, now, 0)
            return
        state = self.executors.get(identity)
        if state is not None:  # re-registered: whatever it ran is gone
            self.requeue(state, "executor re-registered")
        state = self.executors[identity] = ExecutorState(identity, msg.header, now, capacity,
                                                         batch=msg.header.get("batch", capacity))
        self.sched.offer(state)
        self.leases.add(state)
        self.welcome(identity)  # tells the executor the message size limit

    def on_result(self, identity: bytes, msg: Message, now: float) -> None:
        state = self.executors.get(identity)
        if state is None:  # presumed dead meanwhile: its jobs already went elsewhere
            self.counts["duplicates"] += 1
            self.refuse(identity, "unknown executor: send READY first", None, ErrorCode.UNKNOWN_PEER)
            return
        state.last_seen = now
        self.moved = True
        results = msg.header["results"]
        if "busy" in msg.header and results:
            state.observe(msg.header["busy"], len(results))
        frames = iter(msg.payload)
        for tid, status, error, nframes, *ran in results:
            payload = tuple(islice(frames, nframes))
            job = self.finish_task(state, tid, now)
            if job is None:  # a late duplicate of a job requeued, timed out or cancelled
                self.counts["duplicates"] += 1
                self.refuse(identity, "no such job running here", tid, ErrorCode.UNKNOWN_JOB)
                continue
            state.done += 1
            self.forget(job)
            if not job.cancelled:
                self.reply(job, STATUSES[status], payload, error, ran[0] if ran else None, state.name)

    def finish_task(self, state: ExecutorState, tid: int, now: float) -> Optional[Job]:
        """A task left its executor: it has room; the next one there starts."""
        job = state.running.pop(tid, None)
        self.sched.offer(state)
        if state.running and not state.killed:
            nxt = next(iter(state.running.values()))
            if nxt.timeout is not None and nxt.deadline is None:
                self.sched.start_clock(nxt, now)
        return job

    def on_died(self, identity: bytes, msg: Message, now: float) -> None:
        self.touch(identity, now)
        try:
            executor = bytes.fromhex(msg.header["executor"])
        except ValueError as e:
            raise ProtocolError("DIED.executor is not hex") from e
        state = self.executors.get(executor)
        if state is not None:
            sig = msg.header.get("signal", 0)
            reason = f"signal {sig}" if sig else f"exit code {msg.header['exitcode']}"
            # DIED comes from the supervisor, a result from the executor's own
            # connection: wait a moment so a result it sent before dying
            # arrives first and the death is charged to the job it really ran.
            state.capacity = 0
            state.died_in = msg.header.get("job")
            self.dying.append((now + min(0.5, self.heartbeat), executor, reason))

    def bury(self, now: float) -> None:
        """Requeue the jobs of executors whose death was reported a moment ago."""
        while self.dying and self.dying[0][0] <= now:
            _, executor, reason = self.dying.popleft()
            state = self.executors.pop(executor, None)
            if state is not None:
                self.requeue(state, reason, count=True)

    def executors_of(self, supervisor: bytes) -> list[ExecutorState]:
        return [e for e in self.executors.values() if e.supervisor == supervisor]

    def on_drain(self, identity: bytes, msg: Message, now: float) -> None:
        """A worker is stopping: its executors finish what they run, take nothing new."""
        self.touch(identity, now)
        for state in self.executors_of(identity):
            state.capacity = 0
            self.leases.withdraw(state)
        log.info("worker %s draining", identity.hex()[:16])

    def on_depart(self, identity: bytes, msg: Message, now: float) -> None:
        """A worker left on purpose: requeue its jobs without counting a retry."""
        for state in self.executors_of(identity):
            self.requeue(self.executors.pop(state.identity), "its worker departed")
        sup = self.supervisors.pop(identity, None)
        if sup is not None:
            log.info("worker %s:%s departed", sup.info["host"], sup.info["pid"])

    def on_heartbeat(self, identity: bytes, msg: Message, now: float) -> None:
        if not self.touch(identity, now):
            self.refuse(identity, "unknown peer: send HELLO or READY first", None, ErrorCode.UNKNOWN_PEER)
        elif "stats" in msg.header and identity in self.supervisors:
            self.monitor.worker_stats(identity, msg.header["stats"])  # ignored if malformed
        elif "lane" in msg.header and identity in self.executors:  # jobs its lane ran
            state, ran = self.executors[identity], msg.header["lane"]
            state.done += ran
            for count in ("submitted", "done", "laned"):
                self.counts[count] += ran
            self.monitor.lane_failed(state, min(ran, msg.header.get("lane_failed", 0)))

    def on_bye(self, identity: bytes, msg: Message, now: float) -> None:
        if identity in self.clients:
            self.drop_client(self.clients.pop(identity), "said goodbye")
        elif identity in self.executors:
            self.requeue(self.executors.pop(identity), "executor left")
        elif self.supervisors.pop(identity, None) is not None:
            log.info("worker %s left", identity.hex()[:16])

    def on_status(self, identity: bytes, msg: Message, now: float) -> None:
        self.send(identity, Message(Kind.STATUS, self.snapshot()))

    # -- answering clients ----------------------------------------------
    def flush(self) -> None:
        """Send each client the results this turn produced, in one RESULTS."""
        for client in self.clients.values():
            frames = iter(client.outbox)
            for chunk in _chunks(client.results):
                payload = tuple(islice(frames, sum(entry[3] for entry in chunk)))
                self.send(client.identity, Message(Kind.RESULTS, {"results": chunk}, payload))
            client.results, client.outbox = [], []

    def reply(self, job: Job, status: Status, payload: tuple = (), error: Optional[str] = None,
              ran: Optional[float] = None, worker: Optional[str] = None) -> None:
        """Answer a job's client; ``worker`` ran it, named unless STARTED did already."""
        self.counts["done" if status is not Status.LOST else "lost"] += 1
        if status is not Status.OK and not shm.unreachable(error):  # else the client resends it
            self.monitor.job_failed(self, job, status)
        if job.announced:
            worker = None
        job.announced = True  # no STARTED after its result
        self.answer(job.client, job.cid, status, payload, error, ran, worker)

    def answer(self, identity: bytes, cid: int, status: Status, payload: tuple = (),
               error: Optional[str] = None, ran: Optional[float] = None,
               worker: Optional[str] = None) -> None:
        client = self.clients.get(identity)
        if client is None:
            return  # gone: nobody to tell
        client.done += 1
        entry: list = [cid, status.value, error[:1000] if error else None, len(payload)]
        if ran is not None or worker is not None:
            entry.append(ran)  # seconds it ran on its executor
        if worker is not None:
            entry.append(worker)
        client.results.append(entry)
        client.outbox.extend(payload)

    # -- ending jobs ----------------------------------------------------
    def expire_jobs(self, now: float) -> None:
        for job in self.sched.expired(now):
            state = self.executors.get(job.executor) if job.executor else None
            if state is not None and self.monitor.on_lane(state):
                # Its executor runs a job from its lane (as its supervisor
                # said, within 0.1 s): this one waits behind it, not started.
                self.sched.start_clock(job, now)
                continue
            self.counts["timeouts"] += 1
            self.stop_job(job, Status.TIMEOUT, f"job ran past its timeout of {job.timeout:g} s")

    def stop_job(self, job: Job, status: Status, reason: str) -> None:
        """End a running job now: kill its executor, answer the client.

        A job still prefetched (not yet started) is only marked: killing the
        executor would kill the job ahead of it, maybe another client's.
        """
        state = self.executors.get(job.executor) if job.executor else None
        if state is not None and self.started(state, job):
            state.running.pop(job.tid, None)
            self.kill(state)
            reason += f" on {state.info['host']} (executor pid {state.info['pid']}, killed and replaced)"
            job.executor = None
        job.cancelled = True
        self.forget(job)
        self.reply(job, status, (), reason)

    @staticmethod
    def started(state: ExecutorState, job: Job) -> bool:
        """An executor runs its tasks in arrival order: only the first has started."""
        return next(iter(state.running), None) == job.tid

    def kill(self, state: ExecutorState) -> None:
        """Ask an executor's supervisor to kill it; it takes no task meanwhile."""
        state.capacity = 0
        state.killed = True  # its death is ours: no job counts it
        self.leases.withdraw(state)
        if state.supervisor is not None and state.supervisor in self.supervisors:
            self.counts["killed"] += 1
            self.send(state.supervisor, Message(Kind.KILL, {"executor": state.identity.hex()}))
        else:
            # No one to kill it: forget it, so its next message makes it register again.
            log.warning("cannot kill executor %s:%s: its supervisor is unknown",
                        state.info["host"], state.info["pid"])
            self.requeue(self.executors.pop(state.identity), "its supervisor is unknown")

    def kill_lane(self, client: ClientState, worker: str, force: bool) -> None:
        """Stop a job a client sent down a lane it was lent: only by killing
        the lane's executor (the client resends what else the lane held).
        Not if the lane was lent to another since: that one's jobs run there."""
        state = self.leases.lent_last.get(client.identity)
        if state is not None and force and state.name == worker and state.lane_client == client.identity \
                and not state.killed and state.identity in self.executors:
            self.kill(state)

    def forget(self, job: Job) -> None:
        job.deadline = None
        client = self.clients.get(job.client)
        if client is not None and client.jobs.pop(job.cid, None) is not None:
            client.held_bytes -= job.size

    def reply_refused(self, identity: bytes, cid: int, reason: str) -> None:
        """A job the master will not hold: an error result, never silent loss."""
        self.counts["refused"] += 1
        self.answer(identity, cid, Status.ERROR, (), reason)

    def requeue(self, state: ExecutorState, reason: str, count: bool = False) -> None:
        """Put a gone executor's jobs back at the front of their queues, in order.

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
            client = self.clients.get(job.client)
            if job.cancelled or client is None:
                self.forget(job)
                continue
            job.deaths += count and job.tid == culprit and not state.killed
            if job.deaths > job.retries:
                self.forget(job)
                info = state.info
                error = (f"worker {info['host']} pid {info['pid']} died running this job "
                         f"{job.deaths} times ({reason}); raise retries= to allow more")
                self.reply(job, Status.LOST, (), error)
                continue
            self.counts["requeued"] += 1
            self.sched.requeue(client, job)
        if held:
            log.warning("executor %s:%s gone (%s): %d job(s) requeued",
                        state.info["host"], state.info["pid"], reason, len(held))
        state.running = {}

    def drop_client(self, client: ClientState, reason: str) -> None:
        log.info("client %s:%s %s", client.info["host"], client.info["pid"], reason)
        for job in list(client.jobs.values()):
            job.cancelled = True
            job.deadline = None
            state = self.executors.get(job.executor) if job.executor else None
            if state is not None and self.started(state, job):  # stop paying for it
                state.running.pop(job.tid, None)
                self.kill(state)
        client.jobs.clear()
        self.leases.leave(client.identity)
        self.sched.drop(client)

    # -- liveness ---------------------------------------------------------
    def beat(self, now: float) -> None:
        limit = now - self.heartbeat * self.liveness
        for ident, client in list(self.clients.items()):
            if client.last_seen < limit:
                self.drop_client(self.clients.pop(ident), "missed its heartbeats")
        for ident, state in list(self.supervisors.items()):
            if state.last_seen < limit:
                del self.supervisors[ident]
                log.warning("worker %s:%s missed its heartbeats", state.info["host"], state.info["pid"])
        for ident, state in list(self.executors.items()):
            # A busy executor cannot heartbeat; its supervisor vouches for it.
            sup = self.supervisors.get(state.supervisor) if state.supervisor else None
            if max(state.last_seen, sup.last_seen if sup else 0.0) < limit:
                self.requeue(self.executors.pop(ident), "missed its heartbeats", count=True)
        beat = Message(Kind.HEARTBEAT)
        for ident in [*self.clients, *self.executors, *self.supervisors]:
            self.send(ident, beat)

    def snapshot(self) -> dict:
        """A JSON-able picture of the cluster for STATUS requests (see ``cw.monitor``)."""
        return self.monitor.snapshot(self, self.clock())
