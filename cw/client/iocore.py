"""The client's I/O core: one background thread that owns the master socket.

::

    user threads ──submit/cancel──► commands (deque) + wake-up pipe
                                          │
    I/O thread: DEALER ◄──────────────────┘──► master
        HELLO → WELCOME → SUBMIT every held job; RESULT → on_result(id, ...)

Three parts, each its own object, under one lock:

- ``MasterLink`` (``link.py``): the DEALER, HELLO/WELCOME, heartbeats, the
  master's silence and the reconnect it calls for;
- ``HeldJobs`` (``jobs.py``): every unfinished job's frames, the results of
  a turn, shared-memory bounces, failing them all;
- ``Lanes`` (``lane.py``): the lanes lent to this client.

``IOCore`` ties them together: the user threads' commands, the poll, and
``step(timeout, now)``, one turn over the time it is given; ``run()`` only
loops over it with the real clock, and tests drive it turn by turn.

ZeroMQ sockets are not thread-safe: a lock guards the socket and the
jobs held. The I/O thread takes it for each turn of its loop, and waits
between turns on the socket's file descriptor (ZMQ_FD) without it. A user
thread appends a command to a deque (atomic) and writes one byte to a pipe
to wake the poller, except for a job submitted while none is in flight: that
one the user thread sends itself, sparing a round trip the hop through the
I/O thread (jobs submitted in a burst still go out in batches). The core
holds every unfinished job's frames until its result arrives, so after a
reconnect (a restarted master, a network cut) it resubmits them: the client
is the source of truth.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Callable, Optional

import zmq

from .. import blobs, shm
from ..errors import CWError, JobRejectedError, MasterUnavailableError
from ..protocol import Error, ErrorCode, Kind, Message, Welcome
from ..security import Keys
from .direct import DirectServer
from .jobs import HeldJobs, ResultHandler
from .lane import Lanes
from .link import MasterLink

__all__ = ["IOCore", "ResultHandler"]

log = logging.getLogger(__name__)


class IOCore(threading.Thread):
    def __init__(self, host: str, port: int, *, on_result: ResultHandler,
                 on_started: Callable[[list, Optional[str]], None], connect_timeout: float = 30.0,
                 heartbeat: float = 1.0, liveness: int = 10, keys: Optional[Keys] = None,
                 clock: Callable[[], float] = time.monotonic, follow: Optional[str] = None) -> None:
        super().__init__(name=f"cw-client-{host}:{port}", daemon=True)
        direct = DirectServer.open(host, keys)  # first: a bad CW_DIRECT_PORTS leaves nothing open
        self.on_started = on_started
        self.clock = clock
        self.commands: deque = deque()
        # A socket pair, not os.pipe(): once closed, a late write fails
        # cleanly instead of hitting a reused file descriptor.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.waking = False
        self.lock = threading.Lock()  # the sockets, the jobs held: the I/O thread's turn, or a direct submit
        self.readable = False  # a socket held a message at the end of the last turn
        self.settled = threading.Event()  # connected, or failed for good
        self.fatal: Optional[Exception] = None
        self.closing = False
        self.poller = zmq.Poller()
        self.wake_fd = self.wake_r.fileno()  # zmq's poller reports plain sockets by fd
        self.poller.register(self.wake_fd, zmq.POLLIN)
        self.link = MasterLink(f"tcp://{host}:{port}", b"c" + os.urandom(8), keys, self.poller,
                               connect_timeout=connect_timeout, heartbeat=heartbeat,
                               liveness=liveness, clock=clock, follow=follow)
        self.jobs = HeldJobs(self.link, on_result)
        self.lanes = Lanes(self.poller)
        self.direct = direct  # cw.direct: None where it cannot be had
        for sock in direct.sockets() if direct is not None else ():
            self.poller.register(sock, zmq.POLLIN)

    @property
    def address(self) -> str:
        return self.link.address

    @property
    def shared(self) -> bool:
        """Whether big arguments may go through shared memory (until an executor cannot map them)."""
        return self.jobs.shared

    def unavailable(self) -> MasterUnavailableError:
        return self.link.unavailable()

    # -- called from user threads ------------------------------------------
    def submit(self, jid: int, payload: tuple, options: dict) -> None:
        """Hand a job to the I/O thread; ``options``: retries, timeout, expected (header
        fields). A job with more than retries goes through the master, never a lane."""
        size = sum(map(len, payload))
        limit = self.link.max_message_size
        if size > limit:
            raise JobRejectedError(
                f"a job of {size} bytes exceeds the master's --max-message-size "
                f"{limit}; pass big data through files, or raise the limit")
        if not self.jobs.pending and self.send_directly(jid, payload, options):
            return
        self._command(("submit", jid, payload, options))

    def send_directly(self, jid: int, payload: tuple, options: dict) -> bool:
        """Send a job from this (user) thread when nothing is in flight;
        False: queue it for the I/O thread."""
        if not self.lock.acquire(blocking=False):
            return False  # the I/O thread's turn
        try:
            if self.jobs.pending or self.commands or self.closing or self.fatal is not None \
                    or not self.link.connected.is_set():
                return False
            self.jobs.hold(jid, payload, options)
            lent = self.lanes.current()
            if lent is not None and len(options) == 1 and not blobs.needs(payload[1:]) \
                    and lent.send(jid, payload):
                self.on_started([jid], lent.worker)
            else:
                self.link.send_jobs([(jid, payload, options)])
            if self.check_readable():  # news our send took in: the I/O thread's poll won't see it
                self.wake()
            return True
        finally:
            self.lock.release()

    def cancel(self, jid: int, force: bool = False) -> None:
        self._command(("cancel", jid, force))

    def close(self, timeout: Optional[float] = None) -> None:
        """Stop the I/O thread (BYE to the master); safe to call more than once."""
        try:
            self._command(("close",))
        except Exception:
            pass  # already stopped
        if threading.current_thread() is not self:
            self.join(timeout)

    def _command(self, cmd: tuple) -> None:
        if self.fatal is not None:
            raise self.fatal
        self.commands.append(cmd)
        if self.fatal is not None:  # the thread ended meanwhile: nobody will drain it
            raise self.fatal
        self.wake()

    def wake(self) -> None:
        # The flag saves a syscall per command; the I/O thread clears it
        # *before* draining, so a command never waits unseen.
        if not self.waking:
            self.waking = True
            try:
                self.wake_w.send(b"x")
            except BlockingIOError:
                pass  # full of wake-ups already
            except OSError as e:
                raise RuntimeError("this cw client is closed") from e

    # -- the I/O thread ------------------------------------------------------
    def run(self) -> None:
        self.open(self.clock())
        try:
            while not self.closing:
                self.step(0.0 if self.readable else self.link.heartbeat / 4)
        except BaseException:  # a bug here must not hang the user's futures
            log.exception("client I/O thread failed")
            self.fatal = MasterUnavailableError("the cw client I/O thread failed; see the log")
            with self.lock:
                self.jobs.undeliver()
                self.jobs.fail(self.fatal)
        finally:
            if self.fatal is None:
                self.fatal = RuntimeError("this cw client is closed")
            self.settled.set()
            with self.lock:
                self.shutdown()

    def open(self, now: float) -> None:
        """Dial the master and say HELLO: the first thing the I/O thread does."""
        with self.lock:
            self.reconnect(now)
            self.readable = self.check_readable()

    def step(self, timeout: float = 0.0, now: Optional[float] = None) -> None:
        """One turn: wait up to ``timeout`` s for the master, a lane or a
        user's command; handle what came, with ``now`` (read after the wait,
        from ``clock`` unless given) for every deadline: heartbeats, the
        master's silence, the connect timeout. Then hand the turn's results
        to ``on_result``, without the lock."""
        events = dict(self.poller.poll(int(timeout * 1000)))
        with self.lock:
            self.turn(events, self.clock() if now is None else now)
        self.deliver()

    def turn(self, events: dict, now: float) -> None:
        if self.wake_fd in events:
            self.drain_commands()
        if self.link.sock is not None:
            for msg in self.link.receive(now):
                self.handle(msg)
            self.check_broken()
        if self.lanes:
            self.lanes.drain(self.jobs.take, self.send_stranded)
        if self.direct is not None:
            self.direct.serve()
        self.link.watch(events)
        self.check_broken()
        self.keep_alive(now)
        self.readable = self.check_readable()

    def check_readable(self) -> bool:
        """Whether a message waits. ZMQ_FD only signals news the socket has
        not taken in yet: a send may take in a message's arrival unseen, so
        after using the socket ask it, which also re-arms the descriptor."""
        return self.link.readable() or bool(self.lanes) and self.lanes.readable()

    def reconnect(self, now: float) -> None:
        """A fresh socket, then HELLO; WELCOME resubmits held jobs."""
        self.lanes.shut()  # the master forgets our loan
        self.link.reset(now)

    def check_broken(self) -> None:
        if self.link.broken is not None and self.fatal is None:
            self.die(self.link.broken)

    def die(self, error: CWError) -> None:
        """A failure no retry can fix: fail every job and stop."""
        log.error("%s", error)
        self.fatal = error
        self.jobs.fail(error)
        self.closing = True
        self.settled.set()

    def drain_commands(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        self.waking = False
        batch = []
        while self.commands:
            cmd = self.commands.popleft()
            if cmd[0] == "submit":
                self.jobs.hold(*cmd[1:])
                batch.append(cmd[1:])
                continue
            if batch and self.link.connected.is_set():  # keep the order: jobs before a cancel
                self.link.send_jobs(batch)
            batch = []
            if cmd[0] == "cancel":
                self.cancel_now(cmd[1], cmd[2])
            else:
                self.closing = True
        if batch and self.link.connected.is_set():
            self.link.send_jobs(batch)

    def cancel_now(self, jid: int, force: bool) -> None:
        laned = self.lanes.carrying(jid)
        if not self.jobs.drop(jid) or not self.link.connected.is_set():
            return
        if laned is None:
            self.link.send(Message(Kind.CANCEL, {"id": jid, "force": force}))
        elif force:  # it runs (or will) on a lane: its executor must go
            self.link.send(Message(Kind.CANCEL, {"id": jid, "force": True, "lane": laned.worker}))

    def handle(self, msg: Message) -> None:
        if msg.kind is Kind.RESULTS:
            self.jobs.take(msg)
        elif msg.kind is Kind.STARTED:
            self.on_started(msg.body.ids, msg.body.worker)
        elif msg.kind is Kind.WELCOME:
            self.welcome(msg.body)
        elif msg.kind is Kind.LEASE:
            self.lanes.lease(msg.body, self.link.heartbeat, self.link.liveness)
        elif msg.kind is Kind.ERROR:
            self.refused(msg.body)
        elif msg.kind is Kind.FETCH:  # an executor lacks a job's function (cw.blobs)
            if self.direct is not None:
                self.direct.relayed()
            self.link.send(blobs.answer(msg.body, self.link.max_message_size))

    def refused(self, error: Error) -> None:
        """The master's ERROR."""
        if error.code == ErrorCode.UNKNOWN_PEER.value:
            if self.link.connected.is_set():  # one HELLO per loss, not one per refused job
                self.link.connected.clear()
                self.lanes.shut()  # it forgot our loan too
                self.link.send_hello()
        elif error.code == ErrorCode.UNKNOWN_JOB.value:
            log.debug("the master knew no job %s (finished meanwhile)", error.id)
        elif error.code == ErrorCode.NOTICE.value:
            log.warning("the master says: %s", error.error)
        else:
            log.warning("the master refused a message: %s", error.error)

    def welcome(self, terms: Welcome) -> None:
        if self.link.welcome(terms):
            log.warning("master restarted: resubmitting %d unfinished job(s)", len(self.jobs))
        if self.link.connected.is_set():
            return  # an answer to a repeated HELLO: the jobs went out already
        # The master drops resubmissions of jobs it still holds, so resending
        # everything is safe after any reconnect; a lane's answer for itself.
        self.link.send_jobs(self.jobs.held(but=self.lanes.inflight()))
        self.link.connected.set()
        self.settled.set()

    def send_stranded(self, ids: list) -> None:
        """Jobs of a lane that closed: through the master now."""
        if self.link.connected.is_set():
            self.link.send_jobs(self.jobs.held(ids))

    def keep_alive(self, now: float) -> None:
        shm.tidy()  # shared memory's own clock: its spare files are stamped by it
        if self.link.tick(now):
            self.reconnect(now)
        if self.link.gave_up(now):
            self.jobs.fail(self.link.unavailable())

    def deliver(self) -> None:
        """Hand the turn's results to ``on_result``, without the lock: a user
        thread woken by one can send its next job at once."""
        while self.jobs.deliver_next():
            # Slow callbacks run here; keep the master from taking their
            # silence for a vanished client.
            if self.link.heartbeat_due(self.clock()):
                with self.lock:
                    if self.link.sock is not None:
                        self.link.send(Message(Kind.HEARTBEAT))
                        self.readable = self.check_readable()

    def shutdown(self) -> None:
        connected = self.link.connected.is_set()
        if self.link.sock is not None and connected:
            try:
                self.link.send(Message(Kind.BYE))
            except zmq.ZMQError:
                pass
        self.link.close(linger=200 if connected else 0)
        self.lanes.close()
        if self.direct is not None:
            self.direct.close()
        self.jobs.release()
        self.wake_r.close()
        self.wake_w.close()
