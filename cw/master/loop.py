"""The master: routes jobs first-in, first-out from clients to executors.

::

    client ──SUBMIT──► ROUTER ──► Job appended to ClientState.queue
                         │        (clients with queued jobs take turns)
                         ▼
    Scheduler.dispatch() (cw.master.scheduler): executors with room take the ready
                clients' oldest jobs in turns ──TASK──► one message per executor
                per turn, several jobs when its jobs are short
    executor ──RESULT──► master: Jobs leave ExecutorState.running ──RESULTS──► client
    supervisor ──DIED──► master: the dead executor's jobs go back to the front of
                         their client's queue, or fail as lost after `retries` deaths
    master ──KILL──► supervisor: a job past its timeout, force-cancelled, or of a
                         client gone: its executor is killed and replaced
    supervisor ──DRAIN, DEPART──► master: no new tasks; then its executors' jobs are
                         requeued without counting a retry (SIGTERM, SLURM time limit)

Here: the socket and the turn of the loop. What happens to each message is
in ``cw.master.peers`` (registration, liveness, every way an executor is
lost) and ``cw.master.jobs`` (jobs in, results out); both share ``Books``
(``cw.master.state``). One thread, one socket, one poll loop, no locks. Payload frames are routed as
opaque bytes: nothing a peer sends is ever unpickled here. ``step(now)`` is
one turn of the loop; ``run()`` only repeats it. Heartbeats go both ways; a
peer silent for ``heartbeat * liveness`` seconds is presumed gone. Executors
busy with a long job cannot heartbeat: their supervisor speaks for them.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional

import zmq

from ..errors import ProtocolError
from ..protocol import Kind, Message, legacy_layout, salvage_ids, versions
from ..security import WORKER, Keys, ZapHandler, apply_server
from ..transport import NOBLOCK, readable, recv_frames, send_frames
from .beats import Beats
from .blobs import BlobRoutes
from .guard import HANDSHAKE_SECONDS, Guard
from .handover import Handover
from .leases import Leases
from .monitor import Monitor
from .notices import ScalerNotice
from .peers import Peers
from .scheduler import Scheduler
from .state import Books, Limits

log = logging.getLogger(__name__)

RECV_BATCH = 1000  # messages handled per step before dispatching
# After a turn that moved jobs, with none waiting in the queue, poll this long
# before sleeping: the next message (the result of the task just sent, a
# waiting client's next submit) is likely that close, and a thread that sleeps
# pays for its wake-up. On a 2-core VM this took a sequential round trip from
# 1.41 to 1.19 ms; spinning in the executors or the client instead slowed it
# (they share the cores). With jobs queued, executors are busy and need the CPU.
SPIN_SECONDS = 0.0005
# What only a client sends: refused from a peer that holds the workers' key
# (its User-Id, set by the ZAP handler), which may serve jobs and nothing else.
CLIENT_ONLY = frozenset({Kind.HELLO, Kind.SUBMIT, Kind.CANCEL, Kind.BLOB})
_WORKER = WORKER.decode()


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
    # An accepted connection that does not complete its handshake in time is
    # closed (libzmq's default is 30 s): idle connections hold no descriptor long.
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_SECONDS * 1000))
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
    """The master's socket and loop; ``peers`` and ``jobs`` handle what arrives."""

    def __init__(self, host: str = "0.0.0.0", port: int = 5494, *, heartbeat: float = 1.0,
                 liveness: int = 10, clock: Callable[[], float] = time.monotonic,
                 keys: Optional[Keys] = None, cluster_dir: Optional[Path] = None,
                 limits: Limits = Limits(), spin: float = SPIN_SECONDS) -> None:
        self.clock = clock
        self.spin = spin
        versions()  # its imports now: at the descriptor limit no file opens (cw.master.guard)
        self.host = host
        self.sock, self.port = _router(host, port, keys, limits.max_message_size)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.guard = Guard(self.sock, self.port)  # connections that never authenticate: bounded
        self.poller.register(self.guard.mon, zmq.POLLIN)
        self.zap: Optional[ZapHandler] = None
        if keys is not None:
            assert cluster_dir is not None, "a secure master needs its cluster directory"
            self.zap = ZapHandler(cluster_dir)
            self.poller.register(self.zap.sock, zmq.POLLIN)
        else:
            log.warning("CURVE is OFF (--insecure): anyone who can reach port %d can run code "
                        "as this user; use only on an isolated, trusted network", self.port)
        self.books = Books(self.send, heartbeat, liveness, limits, self.port)
        self.sched = Scheduler(self.books.clients, self.books.executors, self.send, self.books.supervisors,
                               self.books.parked)
        self.leases = Leases(self.send)  # executors' lanes lent to clients of their host
        self.monitor = Monitor(clock())  # throughput, job ages, worker CPU/RSS: for `cw status`
        self.peers = Peers(self.books, self.sched, self.leases, self.monitor)
        self.jobs = self.peers.jobs
        self.blobs = BlobRoutes(self.books)  # FETCH and BLOB pass through, nothing is kept
        self.notice = ScalerNotice(cluster_dir, self.send)  # a scaler that stopped, said to clients
        self.handover = Handover()  # to a successor master job, before the time limit (SLURM)
        self.beats = Beats(self.books)  # to every peer, each at a time of its own
        self.next_beat = 0.0
        self.stopping = False
        self.handlers = self.route()

    def route(self) -> dict:
        """Which part handles each kind of message the master takes."""
        peers, jobs = self.peers, self.jobs
        return {Kind.HELLO: peers.on_hello, Kind.SUBMIT: jobs.on_submit, Kind.CANCEL: jobs.on_cancel,
                Kind.READY: peers.on_ready, Kind.RESULT: jobs.on_result, Kind.DIED: peers.on_died,
                Kind.DRAIN: peers.on_drain, Kind.DEPART: peers.on_depart,
                Kind.HEARTBEAT: peers.on_heartbeat, Kind.BYE: peers.on_bye, Kind.STATUS: self.on_status,
                Kind.FETCH: self.blobs.on_fetch, Kind.BLOB: self.blobs.on_blob}

    # What tests and the status read: the books' tables.
    clients = property(lambda self: self.books.clients)
    executors = property(lambda self: self.books.executors)
    supervisors = property(lambda self: self.books.supervisors)
    counts = property(lambda self: self.books.counts)
    malformed = property(lambda self: self.books.malformed)
    heartbeat = property(lambda self: self.books.heartbeat)
    liveness = property(lambda self: self.books.liveness)
    session = property(lambda self: self.books.session)

    # -- the loop ---------------------------------------------------------
    def run(self) -> None:
        while not self.stopping:
            timeout = min(self.heartbeat, 0.5)
            due = self.sched.next_announcement()
            if due is not None:  # wake up to say STARTED in time
                timeout = min(timeout, max(0.0, due - self.clock()))
            due = self.beats.next_due()
            if due is not None:  # and for the next beats due
                timeout = min(timeout, max(0.0, due - self.clock()))
            self.step(timeout)

    def step(self, timeout: float = 0.0, now: Optional[float] = None) -> None:
        """One turn: receive what is there, dispatch, heartbeat, purge."""
        events = self.wait(timeout)
        if self.zap is not None and self.zap.sock in events:
            while self.zap.sock.poll(0):
                self.zap.handle()
        if self.guard.mon in events:
            self.guard.handle(self.clock() if now is None else now)
        if self.sock in events:  # a message waits: the poll asked the socket
            self.receive(now)
        now = self.clock() if now is None else now
        self.peers.bury(now)
        if not self.handover.holding(now):
            self.sched.dispatch(now)
        elif self.handover.over(sum(len(e.running) for e in self.books.executors.values()), now):
            self.stopping = True
        self.lend_or_recall()
        self.jobs.expire_jobs(now)
        self.sched.announce_started(now)
        self.jobs.flush()
        if now >= self.next_beat:
            self.next_beat = now + self.heartbeat
            self.peers.beat(now)
            self.beats.enrol(now)
        self.beats.send_due(now)
        self.monitor.tick(self.books, now)
        self.notice.tick(self.books.clients, now)

    def receive(self, now: Optional[float]) -> None:
        for _ in range(RECV_BATCH):
            try:
                frames = recv_frames(self.sock, NOBLOCK)
            except zmq.Again:
                break
            if self.guard.pending:  # a connection that spoke holds an admitted key
                self.guard.heard(frames[0])
            self.handle(frames, self.clock() if now is None else now)
            # Asked before the next: ending on zmq.Again costs twice as much.
            if not readable(self.sock):
                break

    def lend_or_recall(self) -> None:
        """Jobs wait in the queue: no executor is anyone's own; one of a lent
        lane that took another client's job is no longer lent either."""
        if self.sched.queued and self.leases.held:
            self.leases.recall()
        elif self.sched.shared:
            for state in self.sched.shared:
                if state.leased_to is not None:
                    self.leases.give_back(state.leased_to, tell=True)
        self.sched.shared.clear()

    def wait(self, timeout: float) -> dict:
        """Poll for up to ``timeout`` seconds; if jobs moved since the master's
        last blocking wait and none is queued, spin for up to ``spin`` seconds first."""
        if timeout <= 0:
            return dict(self.poller.poll(0))
        if self.books.moved and not self.sched.queued:
            until = time.perf_counter() + min(self.spin, timeout)
            while True:
                events = dict(self.poller.poll(0))
                if events:
                    return events
                if time.perf_counter() >= until:
                    break
        self.books.moved = False  # a blocking wait: traffic from now on counts anew
        return dict(self.poller.poll(math.ceil(timeout * 1000)))

    def close(self) -> None:
        self.sock.disable_monitor()
        self.guard.close()
        self.sock.close(linger=0)
        if self.zap is not None:
            self.zap.close()

    # -- receiving --------------------------------------------------------
    def handle(self, frames: list, now: float) -> None:
        identity = frames[0].bytes
        try:
            size = sum(map(len, frames[1:]))
            if size > self.books.limits.max_message_size:
                raise ProtocolError(f"message of {size} bytes exceeds --max-message-size "
                                    f"{self.books.limits.max_message_size}")
            msg = Message.from_frames(frames[1:])
            handler = self.handlers.get(msg.kind)
            if handler is None:
                raise ProtocolError(f"{msg.kind.name} is not a message for the master")
            if msg.kind in CLIENT_ONLY and self.zap is not None and frames[1].get("User-Id") == _WORKER:
                self.books.refuse(identity, f"{msg.kind.name} refused: this peer holds the workers' key, "
                                  "which serves jobs only; a client uses the cluster's client key")
                return
            handler(identity, msg, now)
        except ProtocolError as e:
            kind, ids = salvage_ids(frames[1:])
            if ids:
                self.jobs.salvage(identity, kind, ids, str(e), now)
            self.books.refuse(identity, str(e), legacy=legacy_layout(frames[1:]))
        except Exception as e:  # a bug must cost one message, never the master
            log.exception("error handling a message from peer %s", identity.hex()[:16])
            self.books.refuse(identity, f"internal error: {type(e).__name__}")

    def send(self, identity: bytes, msg: Message, legacy: bool = False) -> None:
        self.books.spoken[identity] = self.clock()
        try:
            send_frames(self.sock, [identity, *(msg.to_legacy_frames() if legacy else msg.to_frames())])
        except zmq.ZMQError as e:  # peer gone: it will reconnect or be purged
            log.debug("send to %s failed: %s", identity.hex()[:16], e)

    def on_status(self, identity: bytes, msg: Message, now: float) -> None:
        self.send(identity, Message(Kind.STATUS, self.snapshot()))

    def snapshot(self) -> dict:
        """A JSON-able picture of the cluster for STATUS requests (see ``cw.master.monitor``)."""
        return self.monitor.snapshot(self.books, self.clock())
