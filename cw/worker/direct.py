"""An executor's end of the direct path (``cw.direct``): it fetches a job's
blobs from the job's client, and pushes a big result's buffers to it,
without the master.

Both run in the executor's thread, between jobs: the job waits for its
blobs anyway, and its result cannot leave before its buffers have. A client
not reached within ``CONNECT_SECONDS`` (no handshake) is not tried again for
``RETRY_SECONDS``: its jobs use the master's path meanwhile, and the log
says so once.

Over a secure path the executor then asks for a sealed session (``cw.seal``)
and moves everything on the client's bulk channel; where that cannot be had
(an older client, a port that does not answer) it stays on CURVE.
"""
from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Optional

import zmq

from .. import blobs, direct, seal
from ..errors import ProtocolError
from ..protocol import Kind, Message
from ..security import Keys, apply_client
from ..transport import recv_frames, send_frames

log = logging.getLogger(__name__)

RETRY_SECONDS = 600.0
MAX_PEERS = 8  # clients' sockets kept open at once (least recently used go)
Route = tuple  # (address, the client's public key z85 or None)
_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
           zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_HANDSHAKES = zmq.EVENT_HANDSHAKE_SUCCEEDED | _FAILED[0] | _FAILED[1] | _FAILED[2]


class Link:
    """One client's direct path: the CURVE socket, and the sealed bulk
    channel beside it once agreed."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.bulk: Optional[zmq.Socket] = None
        self.seal: Optional[seal.Seal] = None

    def send(self, frames: list) -> None:
        if self.seal is None:
            send_frames(self.sock, frames)
        else:
            seal.send_copied(self.bulk, self.seal.seal(frames))

    def receive(self, seconds: float) -> Optional[list]:
        """The next message's frames, unsealed; [] for one that did not
        open; None if none came in time."""
        sock = self.sock if self.bulk is None else self.bulk
        if not sock.poll(int(seconds * 1000), zmq.POLLIN):
            return None
        frames = recv_frames(sock)
        if self.seal is None:
            return frames
        return self.seal.open(frames) or []

    def close(self) -> None:
        for sock in (self.sock, self.bulk):
            if sock is not None:
                sock.close(linger=0)


class DirectPeers:
    def __init__(self, keys: Optional[Keys]) -> None:
        self.keys = keys
        self.peers: OrderedDict = OrderedDict()  # address -> its Link
        self.failed: dict[str, float] = {}  # address -> when to try it again
        self.on = direct.enabled()
        self.pushed = self.pushed_bytes = 0

    def route(self, ctx: dict) -> Optional[Route]:
        """Where the job's client offers a direct path, unless it failed of late."""
        address = ctx.get("direct") if self.on else None
        if not isinstance(address, str) or not address.startswith("tcp://"):
            return None
        key = ctx.get("direct_key")
        if (self.keys is None) != (key is None) or key is not None and not isinstance(key, str):
            return None  # one side secure, the other not: the master's path
        if self.failed.get(address, 0.0) > time.monotonic():
            return None
        return address, key

    def fetch(self, route: Route, key: bytes, land: Callable[[int], Any] = blobs.zeroed
              ) -> tuple[Optional[Any], Optional[str]]:
        """A blob from the job's client, in the memory ``land(size)`` gives:
        (its bytes, None); (None, why) if the client holds it no longer;
        (None, None) if the path failed."""
        link = self.connect(route)
        if link is None:
            return None, None
        name, parts, got, total, asked = key.hex(), bytearray(), 0, None, 0
        self.send(link, Kind.FETCH, {"blob": name, "offset": 0})
        while total is None or got < total:
            msg = self.receive(link, route)
            if msg is None:
                return None, None
            body = msg.body
            if msg.kind is not Kind.BLOB or body.blob != name:
                continue  # a late answer to an earlier request
            if body.missing:
                return None, "is no longer held by its client (it left, or the job was already over)"
            if body.offset != got or body.total is None or body.total > blobs.MAX_BLOB \
                    or total is not None and body.total != total:
                continue
            if total is None:
                total, parts = body.total, land(body.total)
            chunk = len(msg.payload[0])
            if got + chunk > total or not seal.put(parts, got, msg.payload[0]):
                return None, None  # too long, or damaged on the way: the master's path
            got += chunk
            asked = max(asked, got)
            while asked < min(total, got + blobs.WINDOW * max(chunk, 1)):
                self.send(link, Kind.FETCH, {"blob": name, "offset": asked})
                asked += chunk
            if not chunk and got < total:
                return None, None  # a client that sends nothing more: the master's path
        return parts, None

    def push(self, route: Route, frames: list) -> list:
        """A result's frames, each buffer of ``blobs.threshold()`` bytes or more
        sent to the client and replaced by its reference; as they were if
        the path failed (they go through the master then)."""
        big = [i for i in range(1, len(frames)) if len(frames[i]) >= blobs.threshold()]
        link = self.connect(route) if big else None
        if link is None:
            return frames
        out = list(frames)
        for i in big:
            key = os.urandom(blobs.DIGEST_BYTES)  # a name, not a digest: results are never shared
            view = memoryview(frames[i]).cast("B")
            for offset in range(0, max(1, view.nbytes), blobs.CHUNK):
                self.send(link, Kind.BLOB, {"blob": key.hex(), "offset": offset, "total": view.nbytes},
                          view[offset:offset + blobs.CHUNK])
            if not self.acked(link, route, key.hex(), view.nbytes):
                return frames
            out[i] = blobs.REF + key
            self.pushed += 1
            self.pushed_bytes += view.nbytes
        return out

    def acked(self, link: Link, route: Route, name: str, total: int) -> bool:
        while True:
            msg = self.receive(link, route)
            if msg is None:
                return False
            if msg.kind is Kind.BLOB and msg.body.blob == name and msg.body.offset == total:
                return True

    def connect(self, route: Route) -> Optional[Link]:
        address, key = route
        link = self.peers.get(address)
        if link is not None:
            self.peers.move_to_end(address)
            return link
        sock = _dealer()
        if self.keys is not None:
            apply_client(sock, Keys(self.keys.public, self.keys.secret, key.encode()))
        if not _connected(sock, address):
            sock.close(linger=0)
            self.give_up(address, f"no handshake within {direct.CONNECT_SECONDS:g} s")
            return None
        link = self.peers[address] = Link(sock)
        while len(self.peers) > MAX_PEERS:
            self.peers.popitem(last=False)[1].close()
        if self.keys is not None and seal.available():
            self.bulk(link, address)
        return link

    @staticmethod
    def bulk(link: Link, address: str) -> None:
        """Agree on a sealed session over CURVE, then move to the client's
        bulk channel; stay on CURVE where either cannot be had."""
        link.send(Message(Kind.FETCH, {"blob": "", "seal": True}).to_frames())
        frames = link.receive(direct.CONNECT_SECONDS)
        try:
            msg = Message.from_frames(frames) if frames else None
        except ProtocolError:
            msg = None
        if msg is None or msg.kind is not Kind.BLOB or msg.body.blob != "" or msg.body.missing:
            log.info("direct path to %s on CURVE alone: the client offers no sealed channel", address)
            return
        terms, where = bytes(msg.payload[0]), msg.body.bulk
        if len(terms) != seal.TERMS_BYTES or not isinstance(where, str) or not where.startswith("tcp://"):
            return
        bulk = _dealer()
        bulk.setsockopt(zmq.ROUTING_ID, terms[:seal.SESSION_BYTES])
        if not _connected(bulk, where):
            bulk.close(linger=0)
            log.warning("direct path to %s on CURVE alone, slower: its sealed channel at %s does "
                        "not answer (let compute nodes reach ports CW_DIRECT_PORTS of that host)",
                        address, where)
            return
        link.bulk, link.seal = bulk, seal.Seal(terms, seal.EXECUTOR)
        seal.keep_freed_memory()

    def give_up(self, address: str, why: str) -> None:
        log.warning("cannot use the direct path to the client at %s (%s): its blobs and big results "
                    "go through the master for %g s", address, why, RETRY_SECONDS)
        self.failed[address] = time.monotonic() + RETRY_SECONDS
        link = self.peers.pop(address, None)
        if link is not None:
            link.close()

    @staticmethod
    def send(link: Link, kind: Kind, header: dict, chunk: Any = None) -> None:
        link.send(Message(kind, header, () if chunk is None else (chunk,)).to_frames())

    def receive(self, link: Link, route: Route) -> Optional[Message]:
        """The client's next answer; None (and the path given up) if none
        comes within ``cw.blobs.FETCH_SECONDS`` (messages that do not open
        do not restart the wait)."""
        deadline = time.monotonic() + blobs.FETCH_SECONDS
        while (frames := link.receive(max(0.0, deadline - time.monotonic()))) is not None:
            try:
                return Message.from_frames(frames)
            except ProtocolError as e:
                log.warning("direct path: dropped a malformed message: %s", e)
        self.give_up(route[0], f"no answer within {blobs.FETCH_SECONDS:g} s")
        return None

    def close(self) -> None:
        while self.peers:
            self.peers.popitem()[1].close()


def _dealer() -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    for name, value in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0)):
        sock.setsockopt(name, value)
    return sock


def _connected(sock: zmq.Socket, address: str) -> bool:
    """Connect, and wait up to ``CONNECT_SECONDS`` for the handshake."""
    mon = sock.get_monitor_socket(_HANDSHAKES, addr=f"inproc://cw-direct-{os.urandom(6).hex()}")
    sock.connect(address)
    ok = _handshake(mon, time.monotonic() + direct.CONNECT_SECONDS)
    sock.disable_monitor()
    mon.close(linger=0)
    return ok


def _handshake(mon: zmq.Socket, deadline: float) -> bool:
    """Wait for the monitor's word that the handshake succeeded (or failed)."""
    from zmq.utils.monitor import recv_monitor_message

    while (left := deadline - time.monotonic()) > 0:
        if not mon.poll(int(left * 1000) + 1, zmq.POLLIN):
            return False
        event = recv_monitor_message(mon)["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            return True
        if event in _FAILED:
            return False
    return False
