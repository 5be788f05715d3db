"""A client's end of the direct path (``cw.direct``): a ROUTER executors of
other hosts fetch blobs from and push big results to, served by the I/O
thread beside the master's socket."""
from __future__ import annotations

import logging
import random
from typing import Optional

import zmq
from zmq.utils import z85

from .. import blobs, direct
from ..errors import ProtocolError
from ..protocol import Blob, Kind, Message
from ..security import ZAP_ENDPOINT, Keys, apply_server
from ..transport import NOBLOCK, readable, recv_frames, send_frames

log = logging.getLogger(__name__)


class DirectServer:
    def __init__(self, ctx: zmq.Context, sock: zmq.Socket, address: str,
                 zap: Optional[zmq.Socket], keys: Optional[Keys]) -> None:
        self.ctx, self.sock, self.address, self.zap = ctx, sock, address, zap
        # Admitted: the cluster's client key and its workers' key (cw.security).
        self.admitted = set() if keys is None else {z85.decode(k) for k in (keys.public, *keys.peers)}
        self.public = None if keys is None else keys.public
        self.pushes: dict[tuple[bytes, bytes], list] = {}  # (peer, key) -> [bytes, how many so far]
        self.warned = False

    @classmethod
    def open(cls, master_host: str, keys: Optional[Keys]) -> Optional["DirectServer"]:
        """Bind on the first free port of ``CW_DIRECT_PORTS``; None where the
        path is off or cannot be had (the master's path serves then)."""
        if not direct.enabled():
            return None
        low, high = direct.ports()  # a malformed value raises: the user's typo, said plainly
        host = direct.advertised_host(master_host)
        if host is None:
            log.info("no direct path: cannot tell this host's address towards %s", master_host)
            return None
        ctx = zmq.Context()
        zap = None
        if keys is not None:  # its own context: its own ZAP endpoint, whatever else runs here
            zap = ctx.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
        sock = ctx.socket(zmq.ROUTER)
        for name, value in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0),
                            (zmq.MAXMSGSIZE, 2 * blobs.CHUNK + (1 << 16))):
            sock.setsockopt(name, value)
        apply_server(sock, None if keys is None else Keys(keys.public, keys.secret, keys.public))
        port = cls._bind(sock, host, low, high)
        if port is None:
            log.warning("no direct path: no free port in %d-%d on %s (CW_DIRECT_PORTS); blobs and "
                        "big results go through the master", low, high, host)
            sock.close()
            if zap is not None:
                zap.close()
            ctx.term()
            return None
        return cls(ctx, sock, f"tcp://{host}:{port}", zap, keys)

    @staticmethod
    def _bind(sock: zmq.Socket, host: str, low: int, high: int) -> Optional[int]:
        count = high - low + 1
        start = random.randrange(count)  # clients of one host spread over the range
        for i in range(count):
            port = low + (start + i) % count
            try:
                sock.bind(f"tcp://{host}:{port}")
                return port
            except zmq.ZMQError:
                continue
        return None

    def sockets(self) -> list:
        return [s for s in (self.sock, self.zap) if s is not None]

    def context_fields(self) -> dict:
        return direct.context_fields(self.address, self.public)

    def serve(self) -> None:
        """Answer what waits: ZAP requests, then FETCH and pushed BLOB chunks."""
        while self.zap is not None and readable(self.zap):
            self.authenticate(self.zap.recv_multipart())
        while readable(self.sock):  # a flag read: this runs at every turn of the I/O thread
            frames = recv_frames(self.sock, NOBLOCK)
            peer = bytes(frames[0])
            try:
                msg = Message.from_frames(frames[1:])
            except ProtocolError as e:
                log.warning("direct path: dropped a malformed message: %s", e)
                continue
            if msg.kind is Kind.FETCH:
                self.reply(peer, blobs.answer(msg.body))
            elif msg.kind is Kind.BLOB:
                self.take_chunk(peer, msg)

    def authenticate(self, frames: list) -> None:
        version, request_id, *_, mechanism = frames[:6]
        credentials = frames[6:]
        ok = mechanism == b"CURVE" and bool(credentials) and credentials[0] in self.admitted
        status = (b"200", b"OK") if ok else (b"400", b"key not admitted")
        if not ok:
            log.warning("direct path: refused a peer at %s: not this cluster's key",
                        frames[3].decode(errors="replace"))
        self.zap.send_multipart([version, request_id, *status, b"", b""])

    def reply(self, peer: bytes, msg: Message) -> None:
        body = msg.header
        if not body.get("missing"):
            direct.counts["served"] += body.get("offset") == 0
            direct.counts["served_bytes"] += sum(map(len, msg.payload))
        send_frames(self.sock, [peer, *msg.to_frames()])

    def take_chunk(self, peer: bytes, msg: Message) -> None:
        """A chunk of a result buffer an executor pushes; all of it parks."""
        body: Blob = msg.body
        try:
            key = bytes.fromhex(body.blob)
        except ValueError:
            return
        if body.missing or body.total is None or body.total > blobs.MAX_BLOB:
            return
        if body.offset == 0:
            self.pushes[(peer, key)] = [blobs.zeroed(body.total), 0]
        entry = self.pushes.get((peer, key))
        chunk = msg.payload[0]
        if entry is None or body.offset != entry[1] or len(entry[0]) != body.total \
                or entry[1] + len(chunk) > body.total:
            self.pushes.pop((peer, key), None)  # out of order: the executor gives up, uses the master
            return
        parts = entry[0]
        parts[entry[1]:entry[1] + len(chunk)] = chunk
        entry[1] += len(chunk)
        if entry[1] < body.total:
            return
        del self.pushes[(peer, key)]
        direct.parked.put(key, parts)
        direct.counts["received"] += 1
        direct.counts["received_bytes"] += len(parts)
        ack = {"blob": body.blob, "offset": body.total, "total": body.total}
        send_frames(self.sock, [peer, *Message(Kind.BLOB, ack, (b"",)).to_frames()])

    def relayed(self) -> None:
        """An executor asked through the master while this path was offered:
        it could not reach us. Said once."""
        if not self.warned:
            self.warned = True
            log.warning("an executor could not reach this client's direct path at %s: blobs and big "
                        "results go through the master, slower (let compute nodes reach ports "
                        "CW_DIRECT_PORTS of this host, or set CW_DIRECT_HOST)", self.address)

    def close(self) -> None:
        for sock in self.sockets():
            sock.close(linger=0)
        self.ctx.term()
