"""Random, mutated and hostile traffic at a running master: it keeps serving."""
import json
import os
import socket
import threading
import time

import jobs
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cw.client import ClusterExecutor
from cw.cluster import cluster_dir
from cw.launch import query_status
from cw.protocol import MAGIC, Kind
from cw.security import apply_client, client_keys

KINDS = [k.value for k in Kind] + [b"Q", b""]
FIELDS = ["id", "ids", "status", "host", "pid", "v", "capacity", "session", "error", "executor",
          "exitcode", "signal", "heartbeat", "retries", "python", "cloudpickle", "supervisor"]
VALUES = st.one_of(st.integers(-2**70, 2**70), st.text(max_size=20), st.none(), st.booleans(),
                   st.floats(), st.lists(st.integers(-5, 2**63), max_size=4),
                   st.sampled_from(["ok", "error", "lost", "3.11.7", "0" * 18]))
header = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=64),
)
message = st.one_of(
    st.lists(st.binary(max_size=128), min_size=1, max_size=6),
    # This protocol's layout (magic, kind and header in one frame), and the
    # three frames of protocols 1 to 3.
    st.tuples(st.sampled_from([MAGIC, b"CW\x00", b"CW", b"XX\x01"]), st.sampled_from(KINDS), header,
              st.lists(st.binary(max_size=256), max_size=3)).map(lambda t: [t[0] + t[1] + t[2], *t[3]]),
    st.tuples(st.sampled_from([MAGIC, b"CW\x03"]), st.sampled_from(KINDS), header,
              st.lists(st.binary(max_size=256), max_size=3)).map(lambda t: [t[0], t[1], t[2], *t[3]]),
)


@pytest.fixture
def fuzz_target(cluster, procs):
    port = cluster(1)
    master = psutil.Process(procs.popens[0].pid)
    return port, master


def peer(port, keys):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.SNDHWM, 0)
    apply_client(sock, keys)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


@pytest.mark.parametrize("authenticated", [True, False])
def test_fuzzed_messages_do_not_stop_the_master(fuzz_target, authenticated):
    port, master = fuzz_target
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:  # warm up: a baseline RSS
        assert ex.submit(jobs.square, 2).result(30) == 4
    rss_before = master.memory_info().rss
    sock = peer(port, client_keys(cluster_dir()) if authenticated else None)
    deadline = time.monotonic() + 60

    @settings(max_examples=400, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(message, min_size=1, max_size=5))
    def throw(batch):
        if time.monotonic() < deadline:
            for frames in batch:
                try:  # an unauthenticated peer has no connection to queue on
                    sock.send_multipart(frames, flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
            while sock.poll(0):
                sock.recv_multipart()  # whatever the master answers

    try:
        throw()
    finally:
        sock.close()
    assert master.is_running() and master.status() != psutil.STATUS_ZOMBIE
    snap = query_status("127.0.0.1", port, timeout=20)
    if authenticated:
        assert snap["counts"]["malformed"] > 0
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert list(ex.map(jobs.square, range(30))) == [i * i for i in range(30)]
    assert master.memory_info().rss - rss_before < 64 * 2**20


def test_raw_tcp_garbage_half_open_and_slow_peers_do_not_stop_service(fuzz_target):
    port, master = fuzz_target
    stop = threading.Event()
    conns = []
    try:
        for _ in range(20):  # half-open: connect and say nothing
            conns.append(socket.create_connection(("127.0.0.1", port)))
        for _ in range(10):  # garbage, then hang around
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(os.urandom(2048))
            conns.append(s)

        def slow():
            with socket.create_connection(("127.0.0.1", port)) as s:
                greeting = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00CURVE" + b"\x00" * 50
                for byte in greeting:
                    if stop.wait(0.05):
                        return
                    try:
                        s.send(bytes([byte]))
                    except OSError:
                        return

        slowpoke = threading.Thread(target=slow)
        slowpoke.start()
        with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
            assert list(ex.map(jobs.square, range(50))) == [i * i for i in range(50)]
        assert slowpoke.is_alive()  # it was still dribbling while we were served
    finally:
        stop.set()
        for s in conns:
            s.close()
        slowpoke.join(10)
    assert master.is_running()
