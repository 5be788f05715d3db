"""A client's end of a lane it was lent (see ``cw.lanes`` for the whole picture)."""
from __future__ import annotations

import logging
import os
from typing import Iterator

import zmq

from ..errors import ProtocolError
from ..protocol import NOBLOCK, Kind, Message, readable, recv_frames, send_frames

log = logging.getLogger(__name__)


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
