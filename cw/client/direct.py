"""A client's end of the direct path (``cw.direct``): a ROUTER executors of
other hosts fetch blobs from and push big results to, served by the I/O
thread beside the master's socket.

A secure client also binds a plain ROUTER, the bulk channel: an executor
asks for a session over the CURVE socket (FETCH with ``seal``), gets its
terms there (BLOB with ``bulk``: where it listens; payload: the session and
a fresh key) and from then on sends and receives sealed messages there
(``cw.seal``), at the speed of AES-GCM rather than of CURVE."""
from __future__ import annotations

import logging
import random
from collections import OrderedDict
from typing import Any, Optional

import zmq
from zmq.utils import z85

from .. import blobs, direct, seal
from ..errors import ProtocolError
from ..protocol import Blob, Kind, Message
from ..security import ZAP_ENDPOINT, Keys, apply_server
from ..transport import NOBLOCK, readable, recv_frames, send_frames

log = logging.getLogger(__name__)

MAX_SESSIONS = 4096  # sealed sessions kept (least recently used go; theirs then fall back)
BULK_TURN = 64  # bulk messages read per turn of the I/O thread: the master's socket is not kept waiting
BULK_DOMAIN = b"cw-bulk"  # the bulk socket's ZAP domain: it admits only hosts that opened a session


class DirectServer:
    def __init__(self, ctx: zmq.Context, sock: zmq.Socket, address: str,
                 zap: Optional[zmq.Socket], keys: Optional[Keys],
                 bulk: Optional[tuple[zmq.Socket, str]] = None) -> None:
        self.ctx, self.sock, self.address, self.zap = ctx, sock, address, zap
        self.bulk, self.bulk_address = bulk if bulk is not None else (None, None)
        self.sessions: OrderedDict[bytes, seal.Seal] = OrderedDict()  # the bulk channel's, by routing id
        self.session_of: dict[bytes, bytes] = {}  # an executor's CURVE identity -> its session
        self.hosts: OrderedDict[str, None] = OrderedDict()  # addresses that opened a session over CURVE
        self.scratch: list = [bytearray()]  # where every session seals a big frame (one thread seals)
        self.refused = 0  # bulk messages that did not open (a stranger, a replay): dropped
        self.turned_away = 0  # connections refused at their handshake
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
        zap = bulk = None
        if keys is not None:  # its own context: its own ZAP endpoint, whatever else runs here
            zap = ctx.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)
        sock = _router(ctx)
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
        if keys is not None and seal.available():  # plain, but only hosts that asked over CURVE connect
            bulk = _router(ctx)
            bulk.setsockopt(zmq.ZAP_DOMAIN, BULK_DOMAIN)
            bulk.setsockopt(zmq.RCVHWM, 1000)
            bulk_port = cls._bind(bulk, host, low, high)
            if bulk_port is None:
                log.info("direct path on CURVE alone: no second free port in %d-%d", low, high)
                bulk.close()
            bulk = None if bulk_port is None else (bulk, f"tcp://{host}:{bulk_port}")
        return cls(ctx, sock, f"tcp://{host}:{port}", zap, keys, bulk)

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
        return [s for s in (self.sock, self.zap, self.bulk) if s is not None]

    def context_fields(self) -> dict:
        return direct.context_fields(self.address, self.public)

    def serve(self) -> None:
        """Answer what waits: ZAP requests, then FETCH and pushed BLOB chunks."""
        while self.zap is not None and readable(self.zap):
            self.authenticate(self.zap.recv_multipart())
        while readable(self.sock):  # a flag read: this runs at every turn of the I/O thread
            frames = recv_frames(self.sock, NOBLOCK)
            self.handle(bytes(frames[0]), frames[1:], None)
        for _ in range(BULK_TURN):
            if self.bulk is None or not readable(self.bulk):
                break
            frames = recv_frames(self.bulk, NOBLOCK)
            key = bytes(frames[0])
            session = self.sessions.get(key)
            opened = None if session is None else session.open(frames[1:])
            if opened is None:
                self.refused += 1
                if self.refused == 1:
                    log.warning("direct path: dropped a message on the bulk channel that did not open "
                                "(no such session, a replay or a forgery); more are only counted")
                continue
            self.sessions.move_to_end(key)
            self.handle(key, opened, session)

    def handle(self, peer: bytes, frames: list, session: Optional[seal.Seal]) -> None:
        try:
            msg = Message.from_frames(frames)
            if msg.kind is Kind.FETCH and msg.body.seal:
                if session is None:
                    self.open_session(peer, frames[-1])
            elif msg.kind is Kind.FETCH:
                self.reply(peer, session, blobs.answer(msg.body))
            elif msg.kind is Kind.BLOB:
                self.take_chunk(peer, session, msg)
        except (ProtocolError, ValueError, OSError) as e:  # a bad name, an impossible size: its alone
            log.warning("direct path: dropped a malformed message: %s", e)

    def open_session(self, peer: bytes, frame: Any) -> None:
        """Terms of a sealed session for an executor that asked over CURVE
        (one each: a new one replaces its last); none where this client
        has no bulk channel. Its host may then connect to the bulk socket."""
        header: dict[str, Any] = {"blob": "", "missing": True}
        payload: tuple = ()
        host = _peer_address(frame)
        if self.bulk is not None and host is not None:
            seal.keep_freed_memory()
            terms = seal.new_terms()
            self.sessions.pop(self.session_of.pop(peer, b""), None)
            self.session_of[peer] = terms[:seal.SESSION_BYTES]
            self.sessions[terms[:seal.SESSION_BYTES]] = seal.Seal(terms, seal.CLIENT, self.scratch)
            self.hosts[host] = None
            self.hosts.move_to_end(host)
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
            while len(self.hosts) > MAX_SESSIONS:
                self.hosts.popitem(last=False)
            if len(self.session_of) > 2 * MAX_SESSIONS:
                self.session_of = {p: k for p, k in self.session_of.items() if k in self.sessions}
            header = {"blob": "", "total": len(terms), "bulk": self.bulk_address}
            direct.counts["sealed"] += 1
            payload = (terms,)
        send_frames(self.sock, [peer, *Message(Kind.BLOB, header, payload).to_frames()])

    def send(self, peer: bytes, session: Optional[seal.Seal], msg: Message) -> None:
        if session is None:
            send_frames(self.sock, [peer, *msg.to_frames()])
        else:
            seal.send_copied(self.bulk, [peer, *session.seal(msg.to_frames())])

    def authenticate(self, frames: list) -> None:
        version, request_id, domain, address, _, mechanism = frames[:6]
        credentials = frames[6:]
        host = address.decode(errors="replace")
        if domain == BULK_DOMAIN:  # the plain bulk socket: hosts that opened a session over CURVE
            ok = mechanism == b"NULL" and host in self.hosts
            why = "no session was opened from there"
        else:
            ok = mechanism == b"CURVE" and bool(credentials) and credentials[0] in self.admitted
            why = "not this cluster's key"
        status = (b"200", b"OK") if ok else (b"400", why.encode())
        if not ok:
            self.turned_away += 1
            if self.turned_away == 1 or domain != BULK_DOMAIN:  # strangers at the plain port: counted
                log.warning("direct path: refused a peer at %s: %s", host, why)
        self.zap.send_multipart([version, request_id, *status, b"", b""])

    def reply(self, peer: bytes, session: Optional[seal.Seal], msg: Message) -> None:
        body = msg.header
        if not body.get("missing"):
            direct.counts["served"] += body.get("offset") == 0
            direct.counts["served_bytes"] += sum(map(len, msg.payload))
        self.send(peer, session, msg)

    def take_chunk(self, peer: bytes, session: Optional[seal.Seal], msg: Message) -> None:
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
        if not seal.put(parts, entry[1], chunk):
            self.pushes.pop((peer, key), None)
            return
        entry[1] += len(chunk)
        if entry[1] < body.total:
            return
        del self.pushes[(peer, key)]
        direct.parked.put(key, parts)
        direct.counts["received"] += 1
        direct.counts["received_bytes"] += len(parts)
        ack = {"blob": body.blob, "offset": body.total, "total": body.total}
        self.send(peer, session, Message(Kind.BLOB, ack, (b"",)))

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


def _router(ctx: zmq.Context) -> zmq.Socket:
    sock = ctx.socket(zmq.ROUTER)
    for name, value in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0),
                        (zmq.MAXMSGSIZE, 2 * blobs.CHUNK + (1 << 16))):
        sock.setsockopt(name, value)
    return sock


def _peer_address(frame: Any) -> Optional[str]:
    """The IP address a received message came from (what its host's other
    connections will come from too), or None."""
    try:
        return str(frame.get("Peer-Address"))
    except (AttributeError, zmq.ZMQError):
        return None
