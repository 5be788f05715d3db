"""The connection to the master that supervisors and executors both use."""
from __future__ import annotations

import logging
import os
import random
import socket
import time
from typing import Callable, Optional

import zmq

from ..cluster import master_address
from ..protocol import ErrorCode, Kind, Message, versions
from ..security import Keys, read_monitor
from ..transport import NOBLOCK, close_dealer, dealer, readable, recv_frames, send_frames

log = logging.getLogger(__name__)


def peer_header(capacity: int, **extra) -> dict:
    return {"capacity": capacity, "host": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
            "pid": os.getpid(),
            **versions(), **extra}


class Peer:
    """A DEALER connection to the master with heartbeats both ways.

    ``clock`` stamps what is sent and heard (a test's fake clock); the
    loop's turn passes its own reading of it to ``tick``.
    """

    def __init__(self, address: str, identity: bytes, heartbeat: float, liveness: int,
                 keys: Optional[Keys] = None, clock: Callable[[], float] = time.monotonic,
                 cluster: Optional[str] = None) -> None:
        self.address = address
        self.identity = identity
        self.cluster = cluster  # whose master.json says where the master is, once it went silent
        self.clock = clock
        self.keys = keys
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.sock, self.monitor = dealer(address, identity, keys)
        self.last_sent = self.last_heard = self.heard = self.looked = clock()  # heard: really, not reset
        self.looks, self.look_every = 0, heartbeat  # master.json read while the master is silent
        self.beat_every = heartbeat  # seconds between our HEARTBEATs (WELCOME may space them)
        self.beat_header: Callable[[], dict] = dict  # what a HEARTBEAT says besides "alive"

    def send(self, msg: Message) -> None:
        """Send without blocking: with no connection the message is dropped
        (heartbeats and READY are repeated; a result's job is requeued)."""
        try:
            send_frames(self.sock, msg.to_frames(), NOBLOCK)
        except zmq.Again:
            return
        self.last_sent = self.clock()

    def moved(self) -> Optional[str]:
        """Where the cluster's master.json now says the master is, if not
        where we dial: a successor master job, or a master restarted on
        another node or port. Asked once the master went silent."""
        address = None if self.cluster is None else master_address(self.cluster)
        return address if address is not None and address != self.address else None

    def follow(self, poller: Optional[zmq.Poller] = None) -> bool:
        """If master.json names another master (``moved``), dial it (the
        socket re-registered in ``poller``); whether it did."""
        address = self.moved()
        if address is None:
            return False
        if poller is not None:
            poller.unregister(self.sock)
        self.redial(address)
        if poller is not None:
            poller.register(self.sock, zmq.POLLIN)
        return True

    def redial(self, address: str) -> None:
        """Drop the connection to a master that went away and dial ``address``."""
        log.warning("the master of cluster %s is now at %s (was %s): following it",
                    self.cluster, address, self.address)
        self.close()
        self.address = address
        self.sock, self.monitor = dealer(address, self.identity, self.keys)
        self.last_heard = self.clock()

    def handshake_error(self) -> Optional[str]:
        """A failed handshake no retry can fix (keys refused, CURVE mismatch)."""
        return read_monitor(self.monitor, self.address, self.keys is not None)

    def close(self, linger: int = 0) -> None:
        close_dealer(self.sock, self.monitor, linger)

    def recv(self, timeout: float) -> Optional[Message]:
        if timeout > 0:
            if not self.sock.poll(int(timeout * 1000)):
                return None
        elif not readable(self.sock):  # a poll builds a Poller: dearer
            return None
        frames = recv_frames(self.sock)
        self.last_heard = self.heard = self.clock()
        self.looks, self.look_every = 0, self.heartbeat
        try:
            return Message.from_frames(frames)
        except Exception as e:
            log.warning("bad message from master: %s", e)
            return None

    def tick(self, now: float) -> bool:
        """Heartbeat if due at ``now``; False when the master has been silent
        too long (the caller says READY again, and ``follow``s master.json),
        and, while it stays silent, as soon as master.json names another
        (read once a heartbeat)."""
        if now - self.last_sent >= self.beat_every:
            self.send(Message(Kind.HEARTBEAT, self.beat_header()))
        limit = self.heartbeat * self.liveness
        if now - self.heard >= limit and now - self.looked >= self.look_every:
            # Backing off to 8 beats, jittered: a cluster's executors reading
            # one file on a shared filesystem through a long wait for a successor.
            self.looked, self.looks = now, self.looks + 1
            self.look_every = self.heartbeat * min(2 ** self.looks, 8) * random.uniform(0.8, 1.2)
            if self.moved() is not None:
                return False
        return now - self.last_heard < limit


def unknown_peer(msg: Message) -> bool:
    return msg.kind is Kind.ERROR and msg.body.code == ErrorCode.UNKNOWN_PEER.value
