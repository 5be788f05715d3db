"""The DEALER every client, supervisor and executor dials the master with."""
from __future__ import annotations

import random
from typing import Optional

import zmq

from .security import Keys, apply_client, monitor


def dealer(address: str, identity: bytes, keys: Optional[Keys]) -> tuple[zmq.Socket, zmq.Socket]:
    """A connected DEALER to the master, and a monitor reporting its handshakes.

    Queues are unbounded (back-pressure is cw's own), nothing lingers at
    close, and libzmq redials a lost master by itself, backing off
    exponentially to 5 s from a random first interval, so a whole cluster
    does not redial in step. That interval is short (20 to 100 ms): a worker
    started beside its master often dials before the master listens, and
    waits that long to try again.
    """
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    apply_client(sock, keys)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, random.randint(20, 100))
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
    mon = monitor(sock)
    sock.connect(address)
    return sock, mon


def close_dealer(sock: zmq.Socket, mon: zmq.Socket, linger: int = 0) -> None:
    sock.disable_monitor()
    mon.close(linger=0)
    sock.close(linger=linger)
