"""What ZeroMQ alone allows on this machine: the floor under cw's round trip.

A Python broker (ROUTER to ROUTER, like cw's master) forwards raw bytes
between one client and one worker that echoes them, CURVE on, nothing
decoded. cw adds to these four hops only its own work: headers, job
bookkeeping, pickling, the client's I/O thread.
"""
from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import zmq


def _secure(sock: zmq.Socket, keys: dict, server: bool) -> None:
    if server:
        sock.curve_server = True
        sock.curve_secretkey = keys["server"][1]
    else:
        sock.curve_serverkey = keys["server"][0]
        sock.curve_publickey, sock.curve_secretkey = keys["client"]


def _broker(keys: dict, ports: mp.Queue) -> None:
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for sock in (front, back):
        _secure(sock, keys, server=True)
    ports.put((front.bind_to_random_port("tcp://127.0.0.1"), back.bind_to_random_port("tcp://127.0.0.1")))
    worker = back.recv_multipart()[0]  # its hello; only then is there anyone to serve
    poller = zmq.Poller()
    poller.register(front, zmq.POLLIN)
    poller.register(back, zmq.POLLIN)
    while True:
        events = dict(poller.poll())
        if back in events:
            front.send_multipart(back.recv_multipart(copy=False)[1:], copy=False)
        if front in events:
            msg = front.recv_multipart(copy=False)
            back.send_multipart([worker, *msg], copy=False)


def _worker(keys: dict, port: int) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    _secure(sock, keys, server=False)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send(b"hello")
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def round_trips(n: int = 300) -> dict:
    """Median and p99 of ``n`` sequential round trips, in milliseconds."""
    keys = {"server": zmq.curve_keypair(), "client": zmq.curve_keypair()}
    ports: mp.Queue = mp.Queue()
    broker = mp.Process(target=_broker, args=(keys, ports), daemon=True)
    broker.start()
    front, back = ports.get(timeout=30)
    worker = mp.Process(target=_worker, args=(keys, back), daemon=True)
    worker.start()
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    _secure(sock, keys, server=False)
    sock.connect(f"tcp://127.0.0.1:{front}")
    try:
        for _ in range(50):  # warm up, and wait for the worker's hello
            sock.send(b"x")
            if not sock.poll(30_000):
                raise RuntimeError("the bare broker did not answer")
            sock.recv()
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            sock.send(b"x")
            sock.recv()
            lat.append(time.perf_counter() - t)
    finally:
        sock.close()
        for proc in (broker, worker):
            proc.kill()
            proc.join()
    lat.sort()
    return {"latency median": statistics.median(lat) * 1e3, "latency p99": lat[int(len(lat) * 0.99)] * 1e3}
