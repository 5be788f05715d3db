"""What ZeroMQ alone allows on this machine: the floors under cw's round trip.

Raw bytes, CURVE on, nothing decoded, one echoing worker, in three shapes:

- ``broker``: a Python broker (ROUTER to ROUTER, like cw's master) forwards
  them between one client and the worker: the four hops of cw's trip.
- ``handoff``: the same, with the client shaped like cw's: a background
  thread receives and completes a ``concurrent.futures.Future`` that the
  calling thread waits on. What any design with cw's client pays here
  before it does any work of its own (headers, queues, pickling).
- ``direct``: no broker, the client talks to the worker: two hops, what a
  path that left the master out of the trip would start from.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import statistics
import threading
import time

import zmq

from cw.transport import readable  # the check cw's client makes, as the shape is cw's

SHAPES = ("broker", "handoff", "direct")


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
    _echo(sock)


def _direct_worker(keys: dict, ports: mp.Queue) -> None:
    sock = zmq.Context().socket(zmq.DEALER)
    _secure(sock, keys, server=True)
    ports.put(sock.bind_to_random_port("tcp://127.0.0.1"))
    _echo(sock)


def _echo(sock: zmq.Socket) -> None:
    while True:
        sock.send_multipart(sock.recv_multipart(copy=False), copy=False)


def _start(keys: dict, shape: str) -> tuple[int, list]:
    """Start the worker (and broker); the port the client dials, the processes."""
    ports: mp.Queue = mp.Queue()
    if shape == "direct":
        worker = mp.Process(target=_direct_worker, args=(keys, ports), daemon=True)
        worker.start()
        return ports.get(timeout=30), [worker]
    broker = mp.Process(target=_broker, args=(keys, ports), daemon=True)
    broker.start()
    front, back = ports.get(timeout=30)
    worker = mp.Process(target=_worker, args=(keys, back), daemon=True)
    worker.start()
    return front, [broker, worker]


class _Receiver(threading.Thread):
    """The client's background thread of ``handoff``: it owns the receiving,
    the calling thread sends under the same lock, as cw's client does."""

    def __init__(self, sock: zmq.Socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.lock = threading.Lock()
        self.waiting: dict = {}
        self.stopping = False

    def trip(self, key: bytes) -> None:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            self.waiting[key] = future
            self.sock.send(key)
        future.result()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self.stopping:
            if poller.poll(100):
                with self.lock:
                    while readable(self.sock):
                        key = self.sock.recv()
                        self.waiting.pop(key).set_result(key)


def round_trips(n: int = 300, shape: str = "broker") -> dict:
    """Median and p99 of ``n`` sequential round trips, in milliseconds."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose from: {', '.join(SHAPES)}")
    keys = {"server": zmq.curve_keypair(), "client": zmq.curve_keypair()}
    port, procs = _start(keys, shape)
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    _secure(sock, keys, server=False)
    sock.connect(f"tcp://127.0.0.1:{port}")
    receiver = None
    try:
        for _ in range(50):  # warm up, and wait for the worker's hello
            sock.send(b"x")
            if not sock.poll(30_000):
                raise RuntimeError(f"the bare {shape} set-up did not answer")
            sock.recv()
        if shape == "handoff":
            receiver = _Receiver(sock)
            receiver.start()
            trip = receiver.trip
        else:
            def trip(key: bytes) -> None:
                sock.send(key)
                sock.recv()
        lat = []
        for i in range(n):
            key = i.to_bytes(4, "little")
            t = time.perf_counter()
            trip(key)
            lat.append(time.perf_counter() - t)
    finally:
        if receiver is not None:
            receiver.stopping = True
            receiver.join()
        sock.close()
        for proc in procs:
            proc.kill()
            proc.join()
    lat.sort()
    return {"latency median": statistics.median(lat) * 1e3, "latency p99": lat[int(len(lat) * 0.99)] * 1e3}


if __name__ == "__main__":
    for shape in SHAPES:
        result = round_trips(2000, shape)
        print(f"{shape:8} median {result['latency median']:.3f} ms, p99 {result['latency p99']:.3f} ms")
