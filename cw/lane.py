"""Lanes: a client's jobs handed straight to an executor on its own host.

::

    client ─SUBMIT─► master ─TASK─► executor          the usual trip: four hops
    client ◄─LEASE── master                           while the cluster is idle,
    client ─TASK───────────────────► executor (lane)  then two hops, ipc://
    client ◄─RESULTS──────────────── executor

A sequential caller (submit one, wait, submit the next) pays every hop of
a trip, and the master's two turns: half the round trip on a small host.
So while a client has a single job in flight, the master may lend it an
idle executor of the same host (shared-memory host key, as ``cw.shm``),
and the client sends such jobs to that executor's lane directly. The
master still decides who runs what: it lends one executor to one client at
a time, takes it back (LEASE without a lane) as soon as jobs queue up or
the executor drains or goes. Should the lane close with jobs in it (the
executor died or stopped), the client sees it close and sends those jobs
through the master again: it keeps every unfinished job's frames, as for a
master restart. Jobs with a
timeout never take a lane; the master enforces timeouts.

A lane is a ROUTER on an ``ipc://`` socket in a directory only its owner
may enter (mode 0700, checked): the same trust as the cluster's key files,
no CURVE needed on a socket no other user can reach. ``CW_LANES=0`` in a
worker's environment turns lanes off.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Callable, Iterator, Optional

import zmq

from . import shm
from .errors import ProtocolError
from .protocol import MAX_INT, NOBLOCK, Kind, Message, readable, recv_frames, send_frames
from .state import ClientState, ExecutorState

log = logging.getLogger(__name__)

_SOCKET = re.compile(r"lane-(\d+)-(\d+)")  # pid namespace, pid
# A lane job's mark in the executor's job slot: the supervisor reports a
# death under it, and the master charges it to no job of its own.
SLOT_MARK = MAX_INT - 1  # the largest DIED.job; the master's job ids never get there


def enabled() -> bool:
    return os.environ.get("CW_LANES", "1").strip().lower() not in ("0", "no", "false", "off")


def _directory() -> Optional[Path]:
    """The owner's lane directory (made 0700), or None where it is not safe."""
    path = Path(shm.ROOT) / f"cw-lanes-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        log.info("no lanes: cannot make %s: %s", path, e)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("no lanes: %s is not a directory of this user's alone (mode 0700)", path)
        return None
    return path


def _sweep(directory: Path, pidns: int) -> None:
    """Remove the sockets of executors of our pid namespace that died
    without closing theirs (another namespace's pids mean nothing here)."""
    for entry in directory.iterdir():
        m = _SOCKET.fullmatch(entry.name)
        if m is None or int(m.group(1)) != pidns:
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
        except OSError:
            pass  # alive


def bind() -> Optional[tuple[zmq.Socket, str]]:
    """This executor's lane: a bound ROUTER and its address; None when lanes
    are off or impossible here (no shared memory, no safe directory)."""
    if not enabled() or shm.host_key() is None:
        return None
    directory = _directory()
    if directory is None:
        return None
    pidns = shm.pid_namespace()
    _sweep(directory, pidns)
    path = directory / f"lane-{pidns}-{os.getpid()}"
    address = f"ipc://{path}"
    if len(address.encode()) > 100:  # sun_path holds 108 bytes
        log.info("no lanes: %s is too long a socket path", path)
        return None
    path.unlink(missing_ok=True)  # a dead process's, whose pid this one has now
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    try:
        sock.bind(address)
    except zmq.ZMQError as e:
        sock.close()
        log.info("no lanes: cannot bind %s: %s", address, e)
        return None
    return sock, address


class Lane:
    """A client's end of a lane it was lent: a DEALER, its monitor, the jobs
    sent down it and not yet answered."""

    _WATCH = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
              | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)

    def __init__(self, address: str, worker: str) -> None:
        self.worker = worker  # host:pid of its executor, as STARTED names it
        self.inflight: set[int] = set()
        self.ready = False  # connected: jobs sent now reach the executor
        self.open = True  # lent still: new jobs may take it
        self.sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        # An identity of its own: a client lent the same lane again connects
        # anew while its old link still holds jobs (two links, one identity:
        # the executor would refuse one).
        self.sock.setsockopt(zmq.IDENTITY, b"l" + os.urandom(8))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, -1)  # a lane that closed is gone for good
        self.monitor: zmq.Socket = self.sock.get_monitor_socket(
            self._WATCH, addr=f"inproc://cw-lane-{os.urandom(6).hex()}")
        self.fds: tuple = (int(self.sock.get(zmq.FD)), self.monitor)
        self.sock.connect(address)

    def usable(self) -> bool:
        return self.open and self.ready

    def send(self, jid: int, payload: tuple) -> bool:
        """Send a job down the lane; False (and the lane closed to new jobs)
        if it cannot take it now: its executor went, unseen yet."""
        header: dict = {"ids": [jid]}
        if len(payload) > 2:  # its call, then out-of-band buffers (after the context)
            header["frames"] = [len(payload) - 1]
        try:
            send_frames(self.sock, Message(Kind.TASK, header, payload).to_frames(), NOBLOCK)
        except zmq.ZMQError:
            self.open = False
            return False
        self.inflight.add(jid)
        return True

    def receive(self) -> Iterator[Message]:
        """Its results waiting now (a malformed one is dropped, logged)."""
        while readable(self.sock):
            frames = recv_frames(self.sock, NOBLOCK)
            try:
                yield Message.from_frames(frames)
            except ProtocolError as e:
                log.warning("dropped a bad message on a lane: %s", e)

    def alive(self) -> bool:
        """Read its monitor: False once the lane closed or never came up."""
        from zmq.utils.monitor import recv_monitor_message

        alive = True
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.ready = True
            else:
                alive = False
        return alive

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


def valid_address(address: str) -> bool:
    """A lane in this user's lane directory: no master of ours lends another."""
    return address.startswith(f"ipc://{shm.ROOT}/cw-lanes-{os.getuid()}/lane-") and ".." not in address


class Leases:
    """The master's side: which executor's lane each client may use.

    An executor with a lane waits on its host's shelf until a client of that
    host with a single job in flight is lent it; one client holds at most one
    lane, and a lane serves one client at a time. Nothing here scans: the
    shelf is keyed by host, the loans by client.
    """

    def __init__(self, send: Callable[[bytes, Message], None]) -> None:
        self.send = send
        self.shelf: dict[str, dict[bytes, ExecutorState]] = {}  # host key -> executors lent to no one
        self.held: dict[bytes, ExecutorState] = {}  # client -> the executor lent to it
        self.lent_last: dict[bytes, ExecutorState] = {}  # client -> the last executor lent to it

    def add(self, state: ExecutorState) -> None:
        """A newly registered executor: on the shelf if it has a lane."""
        key = state.info.get("shm")
        if key and state.info.get("lane") and state.capacity:
            self.shelf.setdefault(key, {})[state.identity] = state

    def lend(self, client: ClientState) -> None:
        """Lend ``client`` a lane of its host, if one is free."""
        key = client.info.get("shm")
        shelf = self.shelf.get(key) if key else None
        if not shelf or client.identity in self.held:
            return
        _, state = shelf.popitem()
        if not state.capacity or state.killed:  # dying meanwhile: the next submit may find another
            return
        state.leased_to = state.lane_client = client.identity
        self.held[client.identity] = state
        self.lent_last[client.identity] = state  # its jobs may run there until it sees the lane close
        self.send(client.identity, Message(Kind.LEASE, {"lane": state.info["lane"], "worker": state.name}))

    def give_back(self, client: bytes, tell: bool, shelve: bool = True) -> None:
        """End ``client``'s loan (telling it, if it still listens); the
        executor goes back on the shelf if ``shelve`` and it still takes work."""
        state = self.held.pop(client, None)
        if state is None:
            return
        state.leased_to = None
        if tell:
            self.send(client, Message(Kind.LEASE, {}))
        if shelve and state.capacity and not state.killed:
            self.add(state)

    def leave(self, client: bytes) -> None:
        """A client that left: its loan ends, and nothing of it is kept."""
        self.give_back(client, tell=False)
        self.lent_last.pop(client, None)

    def recall(self) -> None:
        """Jobs wait in the master's queue: every executor is the queue's again."""
        for client in list(self.held):
            self.give_back(client, tell=True)

    def withdraw(self, state: ExecutorState) -> None:
        """An executor that drains or is gone leaves the shelf, and its client
        is told. (What the lane held, a client learns by itself: it sees the
        lane close, and sends those jobs again through the master.)"""
        shelf = self.shelf.get(state.info.get("shm") or "")
        if shelf is not None:
            shelf.pop(state.identity, None)
        if state.leased_to is not None:
            self.give_back(state.leased_to, tell=True, shelve=False)
