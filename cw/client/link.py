"""The client's link to its master: the DEALER, its handshake and its liveness.

``MasterLink`` owns the socket (dial, redial, close), says HELLO until a
WELCOME answers, sends SUBMITs in batches, and keeps the master's silence
and its own in check over the time its caller gives it (``tick(now)``): a
heartbeat when one is due, a reconnect when the master was silent too long.
It holds no job: what to send again after a WELCOME is the I/O core's call.
Every method runs under the I/O core's lock.
"""
from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import threading
from typing import Any, Callable, Iterable, Iterator, Optional

import zmq

from .. import lanes, shm
from ..cluster import master_address
from ..errors import CWError, MasterUnavailableError, ProtocolError, SecurityError
from ..protocol import Kind, Message, Welcome, version_mismatch, versions
from ..security import Keys, read_monitor, silence
from ..succession import coming
from ..transport import NOBLOCK, close_dealer, dealer, readable, recv_frames, send_frames

log = logging.getLogger(__name__)

RECV_BATCH = 1000


class MasterLink:
    def __init__(self, address: str, identity: bytes, keys: Optional[Keys], poller: zmq.Poller, *,
                 connect_timeout: float, heartbeat: float, liveness: int,
                 clock: Callable[[], float], follow: Optional[str] = None) -> None:
        self.address = address
        self.follow = follow  # the cluster whose master.json says where a silent master went
        self.looked_at = 0.0  # when master.json was last read for that
        self.identity = identity
        self.keys = keys
        self.poller = poller  # the I/O core's: the socket and its monitor join it while open
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.clock = clock  # stamps sends made outside a turn (a user thread's direct submit)
        self.sock: Optional[zmq.Socket] = None
        self.monitor: Optional[zmq.Socket] = None
        self.seen: set = set()  # the monitor's events since the last (re)connect: why it is silent
        self.sock_fd = -1  # the socket's ZMQ_FD, polled without the lock
        self.connected = threading.Event()  # WELCOME came since the last (re)connect
        self.hello_due = False  # a HELLO found no connection to queue on
        self.session: Optional[str] = None  # the master's, from its WELCOME
        self.max_message_size = 1 << 62  # until the master tells its own
        self.broken: Optional[CWError] = None  # a failure no reconnect can fix
        self.lost_since = self.up_at = clock()  # up_at: master last heard; lost_since: moves each give-up
        self.last_sent = self.last_heard = 0.0

    # -- the socket ----------------------------------------------------------
    def reset(self, now: float) -> None:
        """(Re)connect: a fresh socket, then HELLO; the caller resends on WELCOME.
        Following a cluster, a redial goes where its master.json says the master is."""
        address = None if self.sock is None else self.moved(now)
        if address is not None:
            log.warning("the master of cluster %s is now at %s (was %s): following it",
                        self.follow, address, self.address)
            self.address = address
        self.close()
        self.sock, self.monitor = dealer(self.address, self.identity, self.keys)
        self.sock_fd = int(self.sock.get(zmq.FD))
        self.poller.register(self.sock_fd, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.connected.clear()
        self.seen = set()
        self.last_heard = now
        self.send_hello()

    def close(self, linger: int = 0) -> None:
        if self.sock is None or self.monitor is None:
            return
        self.poller.unregister(self.monitor)
        self.poller.unregister(self.sock_fd)
        close_dealer(self.sock, self.monitor, linger)
        self.sock = self.monitor = None

    def readable(self) -> bool:
        return self.sock is not None and readable(self.sock)

    def watch(self, events: dict) -> None:
        """Read the handshake monitor when the poll saw it: a refused key is fatal."""
        if self.monitor is not None and self.monitor in events:
            error = read_monitor(self.monitor, self.address, self.keys is not None, self.seen)
            if error:
                self.broken = SecurityError(error)

    # -- sending -------------------------------------------------------------
    def send(self, msg: Message) -> bool:
        """Send without blocking; False when there is no connection to queue on.

        (A DEALER whose handshake failed has no pipe, and a blocking send
        would hang this thread.) A job not sent stays held by the I/O core
        and goes out again after the next WELCOME.
        """
        assert self.sock is not None
        try:
            send_frames(self.sock, msg.to_frames(), NOBLOCK)
        except zmq.Again:
            return False
        self.last_sent = self.clock()
        return True

    def send_hello(self) -> None:
        hello = {"session": self.identity.hex(), "host": socket.gethostname(),
                 "pid": os.getpid(), "program": _program(), **versions()}
        key = shm.host_key()
        if key is not None and lanes.enabled():  # executors of this host may lend us their lanes
            hello["shm"] = key
        self.hello_due = not self.send(Message(Kind.HELLO, hello))

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

    # -- receiving -----------------------------------------------------------
    def receive(self, now: float) -> Iterator[Message]:
        """The master's messages waiting now (a batch at most); a bad one is
        dropped, one in another protocol version breaks the link."""
        assert self.sock is not None
        for _ in range(RECV_BATCH):
            # Asked first: ending on zmq.Again costs twice as much.
            if not readable(self.sock):
                return
            try:
                frames = recv_frames(self.sock, NOBLOCK)
            except zmq.Again:
                return
            self.last_heard = now
            try:
                msg = Message.from_frames(frames)
            except ProtocolError as e:
                mismatch = version_mismatch(frames, self.address, "this client")
                if mismatch:
                    self.broken = ProtocolError(mismatch)
                    return
                log.warning("dropped a bad message from the master: %s", e)
                continue
            yield msg

    def welcome(self, terms: Welcome) -> bool:
        """Take in a WELCOME's terms; True when it comes from a restarted master."""
        if self.session is None and \
                terms.python.split(".")[:2] != platform.python_version().split(".")[:2]:
            log.warning("master runs Python %s, this client %s", terms.python, platform.python_version())
        restarted = self.session is not None and terms.session != self.session
        self.session = terms.session
        self.max_message_size = terms.max_message_size or self.max_message_size
        self.heartbeat = min(self.heartbeat, terms.heartbeat)
        return restarted

    # -- liveness ------------------------------------------------------------
    def tick(self, now: float) -> bool:
        """Heartbeat or say HELLO again when due at ``now``; True when the
        master has been silent past ``heartbeat * liveness``: reconnect."""
        if self.connected.is_set():
            self.lost_since, self.up_at = now, self.last_heard
            if now - self.last_heard > self.heartbeat * self.liveness:
                log.warning("master at %s silent for %.0f s; reconnecting",
                            self.address, now - self.last_heard)
                return True
            if now - self.last_sent >= self.heartbeat:
                self.send(Message(Kind.HEARTBEAT))
        elif now - self.up_at >= self.heartbeat * self.liveness \
                and now - self.looked_at >= max(1.0, self.heartbeat) and self.moved(now):
            return True  # no answer here for long, and master.json names another: go there
        elif self.hello_due or now - self.last_sent >= max(1.0, self.heartbeat):
            # Until WELCOME, say HELLO again now and then: the one sent may
            # have reached a master that died before answering.
            self.send_hello()
        return False

    def moved(self, now: float) -> Optional[str]:
        """Where the followed cluster's master.json says its master is, if not here."""
        if self.follow is None:
            return None
        self.looked_at = now
        address = master_address(self.follow)
        return address if address is not None and address != self.address else None

    def gave_up(self, now: float) -> bool:
        """True once per ``connect_timeout`` without a WELCOME: fail the jobs
        held; not while a master job of the followed cluster runs or waits
        in SLURM's queue (a successor, ``cw.succession``): they wait for it."""
        if not self.connected.is_set() and now - self.lost_since > self.connect_timeout:
            self.lost_since = now
            successor = None if self.follow is None else coming(self.follow)
            if successor:
                log.warning("no master for %.0f s; %s: keeping the jobs for it",
                            self.connect_timeout, successor)
            return successor is None
        return False

    def heartbeat_due(self, now: float) -> bool:
        return self.connected.is_set() and self.sock is not None \
            and now - self.last_sent >= self.heartbeat

    def unavailable(self) -> MasterUnavailableError:
        if self.monitor is not None:  # events the poll has not handed over yet
            read_monitor(self.monitor, self.address, self.keys is not None, self.seen)
        why = silence(self.seen, self.address, self.keys is not None)
        return MasterUnavailableError(
            f"no cw master answered at {self.address} within {self.connect_timeout:g} s: {why}; "
            "start one (`cw local start`), or point this client at yours (host=/port=, "
            "cluster=, CW_MASTER_ADDRESS; `cw status` shows where it is)"
        )


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


def _program() -> str:
    """The client's script, as a user would name it (``python -m pkg``: pkg)."""
    path = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-") else "python"
    name = os.path.basename(path)
    if name == "__main__.py":
        name = os.path.basename(os.path.dirname(path)) or name
    return name[:64]
