"""The client's I/O core: one background thread that owns the master socket.

::

    user threads ──submit/cancel──► commands (deque) + wake-up pipe
                                          │
    I/O thread: DEALER ◄──────────────────┘──► master
        HELLO → WELCOME → SUBMIT every held job; RESULT → on_result(id, ...)

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
import platform
import socket
import threading
import time
from collections import deque
from itertools import islice
from typing import Any, Callable, Iterable, Optional

import zmq

from .. import lanes, shm
from ..errors import CWError, JobRejectedError, MasterUnavailableError, ProtocolError, SecurityError
from ..protocol import (
    NOBLOCK,
    STATUSES,
    ErrorCode,
    Kind,
    Message,
    Status,
    readable,
    recv_frames,
    send_frames,
    version_mismatch,
    versions,
)
from ..security import Keys, read_monitor
from ..transport import close_dealer, dealer
from . import lane

log = logging.getLogger(__name__)

RECV_BATCH = 1000

# on_result(job id, status, payload frames, error[, seconds it ran[, worker]]):
# the error is the master's text for a failed job, or an exception when the
# client gave up; the worker is named when no STARTED did (a quick job).
ResultHandler = Callable[..., None]


class IOCore(threading.Thread):
    def __init__(self, host: str, port: int, *, on_result: ResultHandler,
                 on_started: Callable[[list, Optional[str]], None], connect_timeout: float = 30.0,
                 heartbeat: float = 1.0, liveness: int = 10, keys: Optional[Keys] = None) -> None:
        super().__init__(name=f"cw-client-{host}:{port}", daemon=True)
        self.keys = keys
        self.address = f"tcp://{host}:{port}"
        self.on_result = on_result
        self.on_started = on_started
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.identity = b"c" + os.urandom(8)
        self.commands: deque = deque()
        # A socket pair, not os.pipe(): once closed, a late write fails
        # cleanly instead of hitting a reused file descriptor.
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.waking = False
        self.lock = threading.Lock()  # the socket, ``pending``: the I/O thread's turn, or a direct submit
        self.sock_fd = -1  # the socket's ZMQ_FD, polled without the lock
        self.readable = False  # the socket held a message at the end of the last turn
        self.connected = threading.Event()
        self.settled = threading.Event()  # connected, or failed for good
        self.fatal: Optional[Exception] = None
        self.max_message_size = 1 << 62  # until the master tells its own
        self.hello_due = False
        self.monitor: Optional[zmq.Socket] = None
        self.pending: dict[int, tuple] = {}  # id -> (payload frames, SUBMIT options)
        self.delivering: deque = deque()  # results of this turn, for on_result after it
        # Big arguments go through shared memory until an executor cannot map them.
        self.shared = shm.host_key() is not None
        self.session: Optional[str] = None
        self.sock: Optional[zmq.Socket] = None
        self.closing = False
        self.lost_since = time.monotonic()
        self.last_sent = self.last_heard = 0.0
        self.poller: Optional[zmq.Poller] = None
        self.lanes: list[lane.Lane] = []  # lanes lent to us (cw.lane); the last may be open

    # -- called from user threads ------------------------------------------
    def submit(self, jid: int, payload: tuple, options: dict) -> None:
        """Hand a job to the I/O thread; ``options``: retries, timeout (header fields)."""
        size = sum(map(len, payload))
        if size > self.max_message_size:
            raise JobRejectedError(
                f"a job of {size} bytes exceeds the master's --max-message-size "
                f"{self.max_message_size}; pass big data through files, or raise the limit")
        if not self.pending and self.send_directly(jid, payload, options):
            return
        self._command(("submit", jid, payload, options))

    def send_directly(self, jid: int, payload: tuple, options: dict) -> bool:
        """Send a job from this (user) thread when nothing is in flight;
        False: queue it for the I/O thread."""
        if not self.lock.acquire(blocking=False):
            return False  # the I/O thread's turn
        try:
            if self.pending or self.commands or self.closing or self.fatal is not None \
                    or not self.connected.is_set():
                return False
            self.pending[jid] = (payload, options)
            lent = self.lanes[-1] if self.lanes else None
            if lent is not None and lent.usable() and "timeout" not in options and lent.send(jid, payload):
                self.on_started([jid], lent.worker)
            else:
                self.send_jobs([(jid, payload, options)])
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
        poller = zmq.Poller()
        wake_fd = self.wake_r.fileno()  # zmq's poller reports plain sockets by fd
        poller.register(wake_fd, zmq.POLLIN)
        self.poller = poller
        with self.lock:
            self.reset_socket(poller)
            self.readable = self.check_readable()
        try:
            while not self.closing:
                events = dict(poller.poll(0 if self.readable else int(self.heartbeat * 250)))
                with self.lock:
                    self.turn(poller, events, wake_fd)
                self.deliver()
        except BaseException:  # a bug here must not hang the user's futures
            log.exception("client I/O thread failed")
            self.fatal = MasterUnavailableError("the cw client I/O thread failed; see the log")
            with self.lock:
                while self.delivering:  # results not handed over (a handler failed)
                    jid, _, result, _, _, sent = self.delivering.popleft()
                    self.pending[jid] = (sent, None)
                    shm.discard(result)
                self.fail_pending(self.fatal)
        finally:
            if self.fatal is None:
                self.fatal = RuntimeError("this cw client is closed")
            self.settled.set()
            with self.lock:
                self.shutdown()

    def turn(self, poller: zmq.Poller, events: dict, wake_fd: int) -> None:
        if wake_fd in events:
            self.drain_commands()
        if self.sock is not None:
            self.drain_socket()
        if self.lanes:
            self.drain_lanes()
        if self.monitor is not None and self.monitor in events:
            error = read_monitor(self.monitor, self.address, self.keys is not None)
            if error:
                self.die(SecurityError(error))
        self.keep_alive(poller)
        self.readable = self.check_readable()

    def check_readable(self) -> bool:
        """Whether a message waits. ZMQ_FD only signals news the socket has
        not taken in yet: a send may take in a message's arrival unseen, so
        after using the socket ask it, which also re-arms the descriptor."""
        return (self.sock is not None and readable(self.sock)) \
            or bool(self.lanes) and any(readable(x.sock) for x in self.lanes)

    def reset_socket(self, poller: zmq.Poller) -> None:
        """(Re)connect: a fresh socket, then HELLO; WELCOME resubmits held jobs."""
        self.close_socket(poller)
        self.shut_lanes()  # the master forgets our loan
        self.sock, self.monitor = dealer(self.address, self.identity, self.keys)
        self.sock_fd = int(self.sock.get(zmq.FD))
        poller.register(self.sock_fd, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        self.connected.clear()
        self.last_heard = time.monotonic()
        self.send_hello()

    def close_socket(self, poller: Optional[zmq.Poller] = None, linger: int = 0) -> None:
        if self.sock is None or self.monitor is None:
            return
        if poller is not None:
            poller.unregister(self.monitor)
            poller.unregister(self.sock_fd)
        close_dealer(self.sock, self.monitor, linger)
        self.sock = self.monitor = None

    def die(self, error: CWError) -> None:
        """A failure no retry can fix: fail every job and stop."""
        log.error("%s", error)
        self.fatal = error
        self.fail_pending(error)
        self.closing = True
        self.settled.set()

    def send_hello(self) -> None:
        hello = {"session": self.identity.hex(), "host": socket.gethostname(),
                 "pid": os.getpid(), **versions()}
        key = shm.host_key()
        if key is not None and lanes.enabled():  # executors of this host may lend us their lanes
            hello["shm"] = key
        self.hello_due = not self.send(Message(Kind.HELLO, hello))

    def send(self, msg: Message) -> bool:
        """Send without blocking; False when there is no connection to queue on.

        (A DEALER whose handshake failed has no pipe, and a blocking send
        would hang this thread.) A job not sent stays in ``pending`` and goes
        out again after the next WELCOME.
        """
        assert self.sock is not None
        try:
            send_frames(self.sock, msg.to_frames(), NOBLOCK)
        except zmq.Again:
            return False
        self.last_sent = time.monotonic()
        return True

    def send_jobs(self, jobs: Iterable[tuple]) -> None:
        """SUBMIT ``(id, (context, *frames), options)`` jobs, batching neighbours
        that share a context and options into one message."""
        batch = _Batch()
        # A batch stays well inside the master's message limit (and 1 MiB):
        # its context, header (about 24 bytes a job) and frames all count.
        budget = min(1 << 20, self.max_message_size // 2)
        for jid, (context, *frames), options in jobs:
            cost = sum(map(len, frames)) + 24
            if batch.ids and (batch.context is not context or batch.options != options
                              or len(batch.ids) >= 1000 or batch.size + cost > budget):
                self.send(batch.message())
                batch = _Batch()
            if not batch.ids:
                batch.context, batch.options, batch.size = context, options, len(context) + 256
            batch.add(jid, frames, cost)
        if batch.ids:
            self.send(batch.message())

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
                jid, payload, options = cmd[1:]
                self.pending[jid] = (payload, options)
                batch.append(cmd[1:])
                continue
            if batch and self.connected.is_set():  # keep the order: jobs before a cancel
                self.send_jobs(batch)
            batch = []
            if cmd[0] == "cancel":
                held = self.pending.pop(cmd[1], None)
                laned = next((x for x in self.lanes if cmd[1] in x.inflight), None)
                if held is not None:
                    shm.release(held[0])
                    if laned is not None:  # it runs (or will) on a lane: its executor must go
                        if cmd[2] and self.connected.is_set():
                            self.send(Message(Kind.CANCEL, {"id": cmd[1], "force": True,
                                                            "lane": laned.worker}))
                    elif self.connected.is_set():
                        self.send(Message(Kind.CANCEL, {"id": cmd[1], "force": cmd[2]}))
            else:
                self.closing = True
        if batch and self.connected.is_set():
            self.send_jobs(batch)

    def drain_socket(self) -> None:
        assert self.sock is not None
        for _ in range(RECV_BATCH):
            # Asked first: ending on zmq.Again costs twice as much.
            if not readable(self.sock):
                return
            try:
                frames = recv_frames(self.sock, NOBLOCK)
            except zmq.Again:
                return
            self.last_heard = time.monotonic()
            try:
                msg = Message.from_frames(frames)
            except ProtocolError as e:
                mismatch = version_mismatch(frames, self.address, "this client")
                if mismatch:
                    self.die(ProtocolError(mismatch))
                    return
                log.warning("dropped a bad message from the master: %s", e)
                continue
            self.handle(msg)

    def deliver(self) -> None:
        """Hand the turn's results to ``on_result``, without the lock: a user
        thread woken by one can send its next job at once."""
        while self.delivering:
            jid, status, payload, error, extra, sent = self.delivering.popleft()
            self.on_result(jid, STATUSES[status], payload, error, *extra)
            # After the handler: freeing a big file takes milliseconds.
            shm.release(sent)
            shm.discard(payload)  # result files the handler did not take
            # Slow callbacks run here; keep the master from taking their
            # silence for a vanished client.
            if self.connected.is_set() and time.monotonic() - self.last_sent >= self.heartbeat:
                with self.lock:
                    if self.sock is not None:
                        self.send(Message(Kind.HEARTBEAT))
                        self.readable = self.check_readable()

    def handle(self, msg: Message) -> None:
        if msg.kind is Kind.RESULTS:
            frames = iter(msg.payload)
            for jid, status, error, nframes, *extra in msg.header["results"]:
                payload = tuple(islice(frames, nframes))
                held = self.pending.pop(jid, None)
                if held is None:  # a duplicate: drop it
                    shm.discard(payload)
                elif status == Status.ERROR.value and shm.bounced(error, held[0]):
                    self.resend(jid, *held)
                    shm.discard(payload)
                else:
                    self.delivering.append((jid, status, payload, error, extra, held[0]))
        elif msg.kind is Kind.STARTED:
            self.on_started(msg.header["ids"], msg.header.get("worker"))
        elif msg.kind is Kind.WELCOME:
            self.welcome(msg.header)
        elif msg.kind is Kind.LEASE:
            self.lease(msg.header)
        elif msg.kind is Kind.ERROR:
            self.refused(msg.header)

    def refused(self, header: dict) -> None:
        """The master's ERROR."""
        if header.get("code") == ErrorCode.UNKNOWN_PEER.value:
            if self.connected.is_set():  # one HELLO per loss, not one per refused job
                self.connected.clear()
                self.shut_lanes()  # it forgot our loan too
                self.send_hello()
        elif header.get("code") == ErrorCode.UNKNOWN_JOB.value:
            log.debug("the master knew no job %s (finished meanwhile)", header.get("id"))
        else:
            log.warning("the master refused a message: %s", header["error"])

    def welcome(self, header: dict) -> None:
        if self.session is None and \
                header["python"].split(".")[:2] != platform.python_version().split(".")[:2]:
            log.warning("master runs Python %s, this client %s",
                        header["python"], platform.python_version())
        if self.session is not None and header["session"] != self.session:
            log.warning("master restarted: resubmitting %d unfinished job(s)", len(self.pending))
        self.session = header["session"]
        self.max_message_size = header.get("max_message_size", self.max_message_size)
        self.heartbeat = min(self.heartbeat, header["heartbeat"])
        if self.connected.is_set():
            return  # an answer to a repeated HELLO: the jobs went out already
        # The master drops resubmissions of jobs it still holds, so resending
        # everything is safe after any reconnect; a lane's answer for itself.
        laned = set().union(*(x.inflight for x in self.lanes))
        self.send_jobs((jid, payload, options) for jid, (payload, options) in self.pending.items()
                       if jid not in laned)
        self.connected.set()
        self.settled.set()

    def lease(self, header: dict) -> None:
        """The master lends us a lane, or (no lane) takes ours back."""
        self.shut_lanes()
        address = header.get("lane")
        if address is None:
            return
        if not lanes.valid_address(address):
            log.warning("ignored a lease of a lane outside this user's directory: %s", address)
            return
        assert self.poller is not None
        x = lane.Lane(address, header.get("worker") or "")
        for fd in x.fds:
            self.poller.register(fd, zmq.POLLIN)
        self.lanes.append(x)

    def shut_lanes(self) -> None:
        """No new job down any lane we hold; those in flight still come back there."""
        for x in self.lanes:
            x.open = False

    def drain_lanes(self) -> None:
        """Results from the lanes; a lane that closed has its jobs sent again
        through the master; a lane taken back is closed once it is empty."""
        for x in list(self.lanes):
            alive = True
            for msg in x.receive():
                if msg.kind is Kind.RESULTS:
                    x.inflight.difference_update(entry[0] for entry in msg.header["results"])
                    self.handle(msg)
                elif msg.kind is Kind.ERROR:
                    log.warning("a lane refused our job: %s", msg.header["error"])
                    alive = False
            alive = x.alive() and alive
            if alive and (x.open or x.inflight):
                continue
            if not alive and x.inflight:
                log.info("a lane closed with %d job(s) in it: sending them through the master",
                         len(x.inflight))
                again = [jid for jid in x.inflight if jid in self.pending]
                if self.connected.is_set():
                    self.send_jobs((jid, *self.pending[jid]) for jid in again)
            self.drop_lane(x)

    def drop_lane(self, x: lane.Lane) -> None:
        if self.poller is not None:
            for fd in x.fds:
                self.poller.unregister(fd)
        x.close()
        self.lanes.remove(x)

    def keep_alive(self, poller: zmq.Poller) -> None:
        shm.tidy()
        now = time.monotonic()
        if self.connected.is_set():
            self.lost_since = now
            if now - self.last_heard > self.heartbeat * self.liveness:
                log.warning("master at %s silent for %.0f s; reconnecting",
                            self.address, now - self.last_heard)
                self.reset_socket(poller)
            elif now - self.last_sent >= self.heartbeat:
                self.send(Message(Kind.HEARTBEAT))
        elif self.hello_due or now - self.last_sent >= max(1.0, self.heartbeat):
            # Until WELCOME, say HELLO again now and then: the one sent may
            # have reached a master that died before answering.
            self.send_hello()
        if not self.connected.is_set() and now - self.lost_since > self.connect_timeout:
            self.fail_pending(self.unavailable())
            self.lost_since = now

    def unavailable(self) -> MasterUnavailableError:
        hint = ("; if it runs, check that this client has its cluster's keys "
                "(same CW_HOME and cluster)") if self.keys is not None else ""
        return MasterUnavailableError(
            f"no cw master answered at {self.address} within {self.connect_timeout:g} s; "
            f"start one (`cw local start`) or pass host=/port= (see `cw status`){hint}"
        )

    def resend(self, jid: int, payload: tuple, options: dict) -> None:
        """Resend a job whose executor could not map its shared memory.

        Files still here: that executor cannot see them (another host or
        container), so the bytes go in the message, and later jobs' too.
        Files gone: an executor of this host claimed them for an earlier run
        of the job (it died, the job was requeued): fresh files, then.
        """
        if shm.unclaimed(payload):
            if self.shared:
                log.info("an executor cannot reach this client's shared memory (another "
                         "host or container): big arguments travel through the master")
                self.shared = False
            again = tuple(shm.inline(f) for f in payload)
        else:
            again = tuple(shm.reissue(f, os.getpid()) for f in payload)
        shm.release(payload)
        self.pending[jid] = (again, options)
        self.send_jobs([(jid, again, options)])

    def fail_pending(self, error: Exception) -> None:
        """Fail every job held (results received this turn are still handed over)."""
        pending, self.pending = self.pending, {}
        for jid, (payload, _) in pending.items():
            shm.release(payload)
            self.on_result(jid, Status.LOST, (), error)

    def shutdown(self) -> None:
        if self.sock is not None and self.connected.is_set():
            try:
                self.send(Message(Kind.BYE))
            except zmq.ZMQError:
                pass
        self.close_socket(linger=200 if self.connected.is_set() else 0)
        for x in list(self.lanes):
            self.drop_lane(x)
        for payload, _ in self.pending.values():
            shm.release(payload)
        self.wake_r.close()
        self.wake_w.close()


class _Batch:
    """Jobs that go out in one SUBMIT: one context, each job's frames."""

    def __init__(self) -> None:
        self.ids: list = []
        self.counts: list = []
        self.frames: list = []
        self.context: Any = None
        self.options: dict = {}
        self.size = 0

    def add(self, jid: int, frames: list, cost: int) -> None:
        self.ids.append(jid)
        self.counts.append(len(frames))
        self.frames += frames
        self.size += cost

    def message(self) -> Message:
        header = {"ids": self.ids, **self.options}
        if len(self.frames) != len(self.ids):  # some job has out-of-band buffers
            header["frames"] = self.counts
        return Message(Kind.SUBMIT, header, (self.context, *self.frames))
