"""CURVE keys of a cluster, the master's ZAP handler, and handshake diagnosis.

The cluster directory holds (mode 0700; secret key files 0600)::

    keys/master.key, keys/master.key_secret   the master's key pair
    keys/client.key, keys/client.key_secret   the owner's key pair (clients)
    keys/authorized/*.key                      public keys the master admits as clients
    keys/worker/worker.key, .../worker.key_secret
                                               the workers' key pair: it serves jobs and
                                               nothing else (the only secret `cw ssh start`
                                               copies to machines)

Whoever needs the keys first (normally the master, on its first start)
creates them, atomically, so peers on the same shared filesystem need no
configuration. The master's ZAP handler runs inside its own poll loop (no
thread) and admits only the keys in ``keys/authorized``, re-read when that
folder changes (``cw keys add/remove``), and the workers' key as a worker's:
its User-Id is ``worker`` (``WORKER``), and the master refuses what only a
client may send (``CLIENT_ONLY`` in ``cw.master.loop``) from such a peer. A
leaked worker secret thus cannot submit jobs; it can still take jobs and
answer them, so it is trusted with their data and results.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import zmq
import zmq.auth
from zmq.utils import z85

from .errors import SecurityError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
MECHANISM_MISMATCH = 0x11000002  # ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
WORKER, CLIENT = b"worker", b"client"  # the User-Id the ZAP handler gives a peer's key


@dataclass(frozen=True)
class Keys:
    """One side's CURVE keys (z85 bytes)."""

    public: bytes
    secret: bytes
    server: bytes  # the master's public key
    peers: tuple = ()  # other public keys this side admits on a socket it serves (the workers')


def insecure_default(value: Optional[bool] = None) -> bool:
    """An explicit choice wins; else ``CW_INSECURE``."""
    if value is not None:
        return value
    return os.environ.get("CW_INSECURE", "").strip().lower() in ("1", "true", "yes", "on")


def keys_dir(cdir: Path) -> Path:
    return cdir / "keys"


def ensure_keys(cdir: Path) -> Path:
    """Create the cluster's key pairs once; safe when several processes race."""
    kdir = keys_dir(cdir)
    if (kdir / "master.key_secret").exists():
        return kdir
    cdir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def fill(tmp: Path) -> None:
        _key_pairs(tmp, "master", "client")
        (tmp / "authorized").mkdir(mode=0o700)
        shutil.copy(tmp / "client.key", tmp / "authorized" / "owner.key")

    _make_once(kdir, "master.key_secret", fill)
    return kdir


def ensure_worker_keys(kdir: Path) -> Optional[Path]:
    """The workers' key pair of a cluster, made once in ``kdir/worker`` where
    the master's secret is (the owner's cluster directory); None elsewhere."""
    wdir = kdir / "worker"
    if (wdir / "worker.key_secret").exists():
        return wdir
    if not (kdir / "master.key_secret").exists():
        return None  # a machine that holds copied keys only: nothing to make here
    _make_once(wdir, "worker.key_secret", lambda tmp: _key_pairs(tmp, "worker"))
    return wdir


def _key_pairs(directory: Path, *names: str) -> None:
    for name in names:
        _, secret = zmq.auth.create_certificates(str(directory), name)
        os.chmod(secret, 0o600)


def _make_once(target: Path, made: str, fill: Callable[[Path], None]) -> None:
    """Make the directory ``target`` by ``fill``-ing a private temporary one
    beside it and renaming that into place: atomic, and safe when several
    processes race (a loser's copy goes; ``target/made`` shows a winner)."""
    tmp = target.parent / f".{target.name}-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir(mode=0o700)
    try:
        fill(tmp)
        os.rename(tmp, target)  # atomic; fails if another process won the race
    except OSError:
        if not (target / made).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """A key pair from a secret key file, refused if others can read it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as e:
        raise SecurityError(f"missing key file {path}; the master creates it on first start") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecurityError(
            f"secret key {path} is readable by others (mode {oct(mode & 0o777)}); "
            f"fix it with: chmod 600 {path}"
        )
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise SecurityError(f"{path} holds no secret key")
    return public, secret


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise SecurityError(f"cannot read public key {path}: {e}") from e
    return public


def master_keys(cdir: Path) -> Keys:
    kdir = ensure_keys(cdir)
    ensure_worker_keys(kdir)  # admitted from the start, as a worker's
    public, secret = load_secret(kdir / "master.key_secret")
    return Keys(public, secret, public)


def client_keys(cdir: Path) -> Keys:
    kdir = keys_dir(cdir)
    # A worker's machine may hold only the client keys and the master's
    # public key (copied by `cw ssh start`): create nothing then.
    if not (kdir / "client.key_secret").exists():
        kdir = ensure_keys(cdir)
    public, secret = load_secret(kdir / "client.key_secret")
    wdir = ensure_worker_keys(kdir)
    workers = (load_public(wdir / "worker.key"),) if wdir is not None else ()
    return Keys(public, secret, load_public(kdir / "master.key"), workers)


def worker_keys(cdir: Path) -> Keys:
    """A worker's keys: the workers' key pair, which can only serve; the
    client pair where a cluster directory has no workers' pair (older copies)."""
    kdir = keys_dir(cdir)
    wdir = ensure_worker_keys(kdir) if (kdir / "master.key_secret").exists() else kdir / "worker"
    if wdir is None or not (wdir / "worker.key_secret").exists():
        return client_keys(cdir)
    public, secret = load_secret(wdir / "worker.key_secret")
    return Keys(public, secret, load_public(kdir / "master.key"))


def apply_client(sock: zmq.Socket, keys: Optional[Keys]) -> None:
    if keys is not None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server)


def apply_server(sock: zmq.Socket, keys: Optional[Keys]) -> None:
    if keys is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, b"cw")


class ZapHandler:
    """Answers libzmq's authentication requests from the master's poll loop."""

    def __init__(self, cdir: Path, ctx: Optional[zmq.Context] = None) -> None:
        self.dir = keys_dir(cdir) / "authorized"
        self.worker = keys_dir(cdir) / "worker" / "worker.key"
        self.sock: zmq.Socket = (ctx or zmq.Context.instance()).socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self.allowed: dict[bytes, bytes] = {}  # key -> the User-Id it is given
        self.stamp: Optional[tuple] = None
        self.checked = 0.0
        self.denied: set[str] = set()
        self.reload()

    def reload(self) -> None:
        stamp = (_mtime(self.dir), _mtime(self.worker))
        if stamp == self.stamp:
            return
        allowed = {}
        for path, who in [(self.worker, WORKER)] * (stamp[1] is not None) + \
                [(p, CLIENT) for p in (self.dir.glob("*.key") if stamp[0] is not None else [])]:
            try:
                allowed[z85.decode(load_public(path))] = who  # a key listed as a client's is one
            except (SecurityError, ValueError):
                log.warning("ignoring unreadable key file %s", path)
        self.allowed, self.stamp = allowed, stamp
        log.info("%d key(s) admitted from %s%s", len(allowed), self.dir,
                 ", and the workers' key" if stamp[1] is not None else "")

    def handle(self) -> None:
        """Answer one pending ZAP request."""
        now = time.monotonic()
        if now - self.checked > 1.0:  # admit keys added since, at most once a second
            self.checked = now
            self.reload()
        frames = self.sock.recv_multipart()
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        credentials = frames[6:]
        user = self.allowed.get(credentials[0]) if mechanism == b"CURVE" and credentials else None
        if user is None:
            who = address.decode(errors="replace")
            if who not in self.denied and len(self.denied) < 10_000:
                self.denied.add(who)
                log.warning("refused a peer at %s: its key is not admitted (cw keys add)", who)
        status = (b"200", b"OK") if user is not None else (b"400", b"key not admitted")
        # The User-Id travels with each message of the connection (Frame.get("User-Id")).
        self.sock.send_multipart([version, request_id, *status, user or b"", b""])

    def close(self) -> None:
        self.sock.close(linger=0)


def _mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def handshake_error(event: int, value: int, address: str, secure: bool) -> Optional[str]:
    """What a failed handshake (a socket monitor event) means, for the user.

    Said as what was found at the address, never as advice to turn CURVE
    off: whoever listens on a master's usual port may be another user's
    program, and a peer without CURVE is exactly what such a program is.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"the master at {address} refused this peer's key; the master admits only keys "
                "in its cluster directory's keys/authorized (see `cw keys add`)")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == MECHANISM_MISMATCH:
        if secure:
            return (f"the peer at {address} does not speak CurveZMQ, so it is not a secure cw master "
                    "(another program listens there, or a master started with --insecure); nothing "
                    "was sent to it. Check the address: the cluster's master.json, host=/port=, "
                    "CW_MASTER_ADDRESS, CW_PORT")
        return (f"the master at {address} requires CURVE and this peer runs with --insecure / "
                "CW_INSECURE=1: drop that flag so that this peer uses its cluster's keys")
    return None


WATCHED = (zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
           | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def monitor(sock: zmq.Socket) -> zmq.Socket:
    """A monitor socket reporting connections and handshake outcomes of ``sock``."""
    return sock.get_monitor_socket(WATCHED, addr=f"inproc://cw-monitor-{os.urandom(6).hex()}")


def read_monitor(mon: zmq.Socket, address: str, secure: bool,
                 seen: Optional[set] = None) -> Optional[str]:
    """Drain a monitor socket; the first fatal handshake failure, explained.
    Every event read is added to ``seen``, for ``silence`` to explain later."""
    from zmq.utils.monitor import recv_monitor_message

    error = None
    while mon.poll(0):
        event = recv_monitor_message(mon)
        if seen is not None:
            seen.add(event["event"])
        error = error or handshake_error(event["event"], event["value"], address, secure)
    return error


def silence(seen: set, address: str, secure: bool) -> str:
    """Why no master answered at ``address``, from the monitor events ``seen``."""
    if zmq.EVENT_HANDSHAKE_SUCCEEDED in seen:
        if secure:  # only the holder of the master's secret key completes a CURVE handshake
            return (f"the master at {address} completed the handshake but sent no answer "
                    "(stopped, or overloaded: see its log)")
        return f"a ZeroMQ peer at {address} took the connection but sent no cw answer"
    if zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL in seen and secure:
        return (f"a program at {address} took the connection but does not hold this cluster's "
                "master key (keys/master.key): another cluster's master, or not a cw master")
    if zmq.EVENT_CONNECTED in seen:
        return (f"a program at {address} took the connection but completed no handshake: not a "
                "cw master, or a master out of file descriptors (see its log)")
    return (f"nothing took a connection at {address} (no master there, or one out of file "
            "descriptors: see its log)")
