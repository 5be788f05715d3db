"""The direct path's parts (cw.direct): its settings, the client's server
(who it admits, what it answers) and an executor's end against it."""
import contextlib
import time

import pytest
import zmq

from cw import blobs, direct, seal
from cw.client.direct import DirectServer
from cw.protocol import Kind, Message
from cw.security import Keys
from cw.worker.direct import DirectPeers


def keypair() -> Keys:
    public, secret = zmq.curve_keypair()
    return Keys(public, secret, public)


@pytest.mark.parametrize("raw, expected", [("", direct.DEFAULT_PORTS), ("6000-6009", (6000, 6009)),
                                           ("7000", (7000, 7000))])
def test_ports_come_from_cw_direct_ports(monkeypatch, raw, expected):
    monkeypatch.setenv("CW_DIRECT_PORTS", raw)
    assert direct.ports() == expected


@pytest.mark.parametrize("raw", ["5500-", "abc", "6000-5000", "0-10", "5500-70000"])
def test_a_malformed_port_range_is_an_error_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv("CW_DIRECT_PORTS", raw)
    with pytest.raises(ValueError, match="CW_DIRECT_PORTS"):
        direct.ports()


def test_a_pushed_buffer_waits_for_its_result_and_goes_with_it():
    parked = direct.Parked()
    parked.put(b"k" * 32, bytearray(b"data"))
    assert parked.take(b"k" * 32) == b"data" and parked.take(b"k" * 32) is None
    assert parked.bytes == 0


def test_a_result_takes_its_pushed_buffers_in_place_of_their_references(monkeypatch):
    key = b"r" * 32
    direct.parked.put(key, bytearray(b"big"))
    frames = direct.resolve((b"pickle", blobs.REF + key, b"other"))
    assert frames == (b"pickle", bytearray(b"big"), b"other") and key not in direct.parked.entries


@pytest.fixture
def server(request, monkeypatch):
    """A client's direct server, served by a thread; ``indirect`` False: one
    that offers no sealed channel (as without ``cryptography``)."""
    monkeypatch.setenv("CW_DIRECT_HOST", "127.0.0.1")
    monkeypatch.setenv("CW_DIRECT_PORTS", "20000-60000")
    if getattr(request, "param", True) is False:
        monkeypatch.setattr(seal, "available", lambda: False)
    keys = keypair()
    srv = DirectServer.open("127.0.0.1", keys)
    assert srv is not None and srv.address.startswith("tcp://127.0.0.1:")
    stop = False

    import threading

    def serve():
        poller = zmq.Poller()
        for sock in srv.sockets():
            poller.register(sock, zmq.POLLIN)
        while not stop:
            if poller.poll(50):
                srv.serve()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv, keys
    stop = True
    thread.join(5)
    srv.close()


@contextlib.contextmanager
def held(data: bytes):
    """``data`` held in this process's blob store, as a job's client holds
    it, for the block; yields its key."""
    key = blobs.digest(data)
    blobs.store.add(key, data)
    try:
        yield key
    finally:
        blobs.store.let_go((b"", blobs.REF + key))


@contextlib.contextmanager
def executor_end(srv: DirectServer, keys: Keys):
    """An executor's end of the direct path with ``keys``; yields it and its route to ``srv``."""
    peers = DirectPeers(keys)
    try:
        yield peers, peers.route({"direct": srv.address, "direct_key": srv.public.decode()})
    finally:
        peers.close()


@contextlib.contextmanager
def plain_dealer():
    """A DEALER with no CURVE: what anyone on a host can open."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        yield sock
    finally:
        sock.close()


def wait_until(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_an_executor_with_the_cluster_key_fetches_and_pushes(server):
    srv, keys = server
    data = bytes(range(256)) * 40_000  # 10 MB: three chunks
    with held(data) as key, executor_end(srv, keys) as (peers, route):
        got, missing = peers.fetch(route, key)
        assert missing is None and bytes(got) == data
        assert peers.peers[srv.address].seal is not None and len(srv.sessions) == 1  # sealed, not CURVE
        frames = peers.push(route, [b"pickle", memoryview(data)])
        assert frames[1][:4] == blobs.REF and peers.pushed_bytes == len(data)
        assert bytes(direct.resolve(tuple(frames))[1]) == data
        assert peers.fetch(route, b"\0" * 32) == (None, "is no longer held by its client "
                                                        "(it left, or the job was already over)")


@pytest.mark.parametrize("server", [False], indirect=True)
def test_without_a_sealed_channel_the_executor_stays_on_curve(server):
    srv, keys = server
    data = bytes(range(256)) * 20_000
    with held(data) as key, executor_end(srv, keys) as (peers, route):
        assert srv.bulk is None
        got, missing = peers.fetch(route, key)
        assert missing is None and bytes(got) == data and peers.peers[srv.address].seal is None


def test_the_bulk_channel_drops_what_does_not_open(server):
    """A connection from a host that may use the plain bulk socket: nothing
    it sends opens, and the cluster's executors go on being served."""
    srv, keys = server
    data = b"blob" * 500_000
    with held(data) as key, executor_end(srv, keys) as (peers, route), plain_dealer() as stranger:
        assert peers.fetch(route, key)[0] is not None
        link = peers.peers[srv.address]
        stranger.setsockopt(zmq.ROUTING_ID, b"\x01" + b"x" * 15)
        stranger.connect(srv.bulk_address)
        stranger.send_multipart([b"garbage"])
        stranger.send_multipart(Message(Kind.FETCH, {"blob": key.hex(), "offset": 0}).to_frames())
        replay = link.seal.seal(Message(Kind.FETCH, {"blob": key.hex(), "offset": 0}).to_frames())
        replay[0] = (0).to_bytes(8, "big")  # an old counter: a replay
        link.bulk.send_multipart(replay)
        wait_until(lambda: srv.refused >= 3)
        assert srv.refused == 3
        assert not stranger.poll(200)  # it got nothing back
        got, missing = peers.fetch(route, key)
        assert missing is None and bytes(got) == data


def test_the_bulk_port_admits_only_hosts_that_opened_a_session(server, caplog):
    """A plain port, but a connection from a host that opened no session
    over CURVE is turned away at its handshake: none of its bytes are read."""
    srv, keys = server
    data = b"blob" * 300_000
    with held(data) as key, executor_end(srv, keys) as (peers, route), plain_dealer() as stranger:
        assert peers.fetch(route, key)[0] is not None  # a session, opened from 127.0.0.1
        assert "127.0.0.1" in srv.hosts and srv.refused == srv.turned_away == 0
        host_port = srv.bulk_address[len("tcp://"):]
        stranger.connect(f"tcp://127.0.0.2:0;{host_port}")  # another "host" (source address)
        stranger.send_multipart([b"garbage"])
        wait_until(lambda: srv.turned_away >= 1)
        assert srv.turned_away >= 1 and "no session was opened from there" in caplog.text
        assert peers.fetch(route, key)[0] is not None  # the executor is still served
        assert srv.refused == 0  # the stranger's message was never read


def test_a_stranger_key_gets_nothing(server, monkeypatch):
    """Another user's key: no handshake, no blob; the executor falls back."""
    srv, keys = server
    monkeypatch.setattr(direct, "CONNECT_SECONDS", 1.0)
    stranger = keypair()
    with held(b"secret" * 300_000) as key, \
            executor_end(srv, Keys(stranger.public, stranger.secret, keys.public)) as (peers, route):
        started = time.monotonic()
        assert peers.fetch(route, key) == (None, None)
        assert time.monotonic() - started < 30
        assert peers.route({"direct": srv.address, "direct_key": keys.public.decode()}) is None


def test_a_malformed_message_is_dropped_and_the_server_goes_on(server):
    srv, keys = server
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys.public, keys.secret, keys.public
    sock.connect(srv.address)
    try:
        sock.send_multipart([b"garbage", b"more"])
        sock.send_multipart(Message(Kind.FETCH, {"blob": "00" * 32, "offset": 0}).to_frames())
        assert sock.poll(10_000)
        answer = Message.from_frames(sock.recv_multipart())
        assert answer.kind is Kind.BLOB and answer.body.missing
    finally:
        sock.close()


def test_a_secure_executor_will_not_use_a_plain_path_nor_the_reverse():
    secure = DirectPeers(keypair())
    plain = DirectPeers(None)
    assert secure.route({"direct": "tcp://127.0.0.1:5500"}) is None
    assert plain.route({"direct": "tcp://127.0.0.1:5500", "direct_key": "x" * 40}) is None
    assert plain.route({"direct": "ipc:///tmp/x"}) is None
    assert plain.route({"direct": "tcp://127.0.0.1:5500"}) == ("tcp://127.0.0.1:5500", None)


def test_a_client_with_a_malformed_port_range_says_so_before_it_connects(monkeypatch):
    from cw.client import ClusterExecutor

    monkeypatch.setenv("CW_DIRECT_PORTS", "55-oops")
    with pytest.raises(ValueError, match="CW_DIRECT_PORTS='55-oops'"):
        ClusterExecutor("127.0.0.1", 1, insecure=True, connect_timeout=2)
