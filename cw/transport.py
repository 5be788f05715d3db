"""Sockets: the DEALER every client, supervisor and executor dials the master
with, and sending and receiving multipart messages cheaply."""
from __future__ import annotations

import random
from typing import Any, Optional, Sequence, cast

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


# pyzmq's send_multipart/recv_multipart cost twice these loops: they build
# flag enums and query RCVMORE per frame. Plain ints and Frame.more do not.
_SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
# Plain ints: pyzmq's flag enums cost more in ``sock.get(EVENTS) & POLLIN`` than the call.
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
COPY_BELOW = 64 * 1024  # smaller frames are cheaper copied than referenced


def readable(sock: zmq.Socket) -> bool:
    """Whether a message waits on ``sock``: cheaper than a poll of it, and
    than a receive that ends on ``zmq.Again``."""
    return bool(cast(int, sock.get(_EVENTS)) & _POLLIN)


def send_frames(sock: zmq.Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """Send a multipart message; big frames (and received ones) without a copy.

    With ``NOBLOCK`` it raises ``zmq.Again`` before sending anything: libzmq
    takes the remaining parts of a message once it took the first.
    """
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        copy = isinstance(frame, bytes) and len(frame) < COPY_BELOW
        sock.send(frame, flags | _SNDMORE if i < last else flags, copy=copy)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list:
    """Receive a multipart message as ``zmq.Frame`` objects (payloads uncopied)."""
    frame = sock.recv(flags, copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(0, copy=False)
        frames.append(frame)
    return frames
