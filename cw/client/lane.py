"""A client's ends of the lanes it was lent (see ``cw.lanes`` for the whole picture)."""
from __future__ import annotations

import logging
import os
from typing import Callable, Iterator, Optional

import zmq

from .. import lanes
from ..errors import ProtocolError
from ..protocol import Kind, Lease, Message
from ..transport import NOBLOCK, readable, recv_frames, send_frames

log = logging.getLogger(__name__)


class Lane:
    """A client's end of a lane it was lent: a DEALER, its monitor, the jobs
    sent down it and not yet answered."""

    _WATCH = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
              | zmq.EVENT_CLOSED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)

    def __init__(self, address: str, worker: str, heartbeat: float = 1.0, liveness: int = 10) -> None:
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
        # Liveness, as the master's path has it (a frozen peer is noticed
        # within the heartbeat window): libzmq's own PING every heartbeat.
        # The executor's libzmq thread answers it even while a job holds the
        # GIL for an hour; a frozen executor (SIGSTOP, a frozen cgroup) does
        # not, and after heartbeat * liveness without a word the link closes:
        # the monitor says DISCONNECTED and the lane's jobs go through the
        # master (``Lanes.drain``). Its late results can no longer arrive.
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, max(1, round(heartbeat * 1000)))
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(1, round(heartbeat * liveness * 1000)))
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


class Lanes:
    """The lanes lent to a client: the last may be open to new jobs, the
    others only bring back the jobs still in them. Runs under the I/O core's lock."""

    def __init__(self, poller: zmq.Poller) -> None:
        self.poller = poller  # the I/O core's: each lane's socket and monitor join it
        self.held: list[Lane] = []

    def __len__(self) -> int:
        return len(self.held)

    def current(self) -> Optional[Lane]:
        """The lane new jobs may take, if it is connected and still lent."""
        lent = self.held[-1] if self.held else None
        return lent if lent is not None and lent.usable() else None

    def inflight(self) -> frozenset:
        return frozenset().union(*(x.inflight for x in self.held))

    def carrying(self, jid: int) -> Optional[Lane]:
        return next((x for x in self.held if jid in x.inflight), None)

    def readable(self) -> bool:
        return any(readable(x.sock) for x in self.held)

    def lease(self, lease: Lease, heartbeat: float = 1.0, liveness: int = 10) -> None:
        """The master lends us a lane, or (no lane) takes ours back; the
        client's ``heartbeat`` and ``liveness`` bound the lane's silence."""
        self.shut()
        address = lease.lane
        if address is None:
            return
        if not lanes.valid_address(address):
            log.warning("ignored a lease of a lane outside this user's directory: %s", address)
            return
        x = Lane(address, lease.worker or "", heartbeat, liveness)
        for fd in x.fds:
            self.poller.register(fd, zmq.POLLIN)
        self.held.append(x)

    def shut(self) -> None:
        """No new job down any lane we hold; those in flight still come back there."""
        for x in self.held:
            x.open = False

    def drain(self, on_results: Callable[[Message], None],
              on_stranded: Callable[[list], None]) -> None:
        """Results from the lanes to ``on_results``; a lane that closed has its
        jobs handed to ``on_stranded`` (to go through the master); a lane taken
        back is closed once it is empty."""
        for x in list(self.held):
            alive = True
            for msg in x.receive():
                if msg.kind is Kind.RESULTS:
                    x.inflight.difference_update(entry.id for entry in msg.body.results)
                    on_results(msg)
                elif msg.kind is Kind.ERROR:
                    log.warning("a lane refused our job: %s", msg.body.error)
                    alive = False
            alive = x.alive() and alive
            if alive and (x.open or x.inflight):
                continue
            if not alive and x.inflight:
                log.info("a lane closed with %d job(s) in it: sending them through the master",
                         len(x.inflight))
                on_stranded(list(x.inflight))
            self.drop(x)

    def drop(self, x: Lane) -> None:
        for fd in x.fds:
            self.poller.unregister(fd)
        x.close()
        self.held.remove(x)

    def close(self) -> None:
        for x in list(self.held):
            self.drop(x)
