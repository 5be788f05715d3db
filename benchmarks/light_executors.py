#!/usr/bin/env python3
"""Many light executors in one process, for the scale benchmark.

    python benchmarks/light_executors.py PORT COUNT [--insecure] [--delay MS]

Each is a real DEALER connection speaking cw's protocol to the master at
127.0.0.1:PORT (with the cluster's keys from CW_HOME unless --insecure):
it registers, heartbeats, and answers every TASK at once with results that
say "done" (a pickled None), so the master's own cost is what is measured.
With ``--delay MS`` each runs its jobs one after another, each taking MS
milliseconds of doing nothing (a job that sleeps): a result leaves MS after
its job started, as from a real executor, however many there are.
"""
from __future__ import annotations

import heapq
import itertools
import os
import pickle
import sys
import time
from collections import deque

import zmq

from cw.cluster import cluster_dir
from cw.protocol import Kind, Message, versions
from cw.security import apply_client, client_keys
from cw.transport import recv_frames, send_frames

NONE = pickle.dumps(None, protocol=5)


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    keys = None if "--insecure" in sys.argv else client_keys(cluster_dir())
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    socks = []
    ready = Message(Kind.READY, {"capacity": 2, "batch": 64, "supervisor": "", "host": "light",
                                 "pid": os.getpid(), **versions()})
    for _ in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.identity = b"e" + os.urandom(8)
        apply_client(sock, keys)
        sock.connect(f"tcp://127.0.0.1:{port}")
        send_frames(sock, ready.to_frames())
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    beat = Message(Kind.HEARTBEAT).to_frames()
    next_beat = time.monotonic() + 2
    delay = float(sys.argv[sys.argv.index("--delay") + 1]) / 1000 if "--delay" in sys.argv else None
    queues = {sock: deque() for sock in socks}  # with a delay: jobs not yet run
    due: list = []  # heap of (when the running job ends, n, socket)
    seq = itertools.count()  # ties in the heap: never compare sockets
    while True:
        wait = 500 if not due else max(0, int((due[0][0] - time.monotonic()) * 1000))
        for sock, _ in poller.poll(wait):
            msg = Message.from_frames(recv_frames(sock))
            if msg.kind is not Kind.TASK:
                continue
            ids = msg.header["ids"]
            if delay is None:
                results = {"results": [[tid, "ok", None, 1] for tid in ids], "busy": 1e-6 * len(ids)}
                send_frames(sock, Message(Kind.RESULT, results, (NONE,) * len(ids)).to_frames())
                continue
            idle = not queues[sock]
            queues[sock].extend(ids)
            if idle:
                heapq.heappush(due, (time.monotonic() + delay, next(seq), sock))
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, sock = heapq.heappop(due)
            tid = queues[sock].popleft()
            results = {"results": [[tid, "ok", None, delay]], "busy": delay}
            send_frames(sock, Message(Kind.RESULT, results, (NONE,)).to_frames())
            if queues[sock]:
                heapq.heappush(due, (now + delay, next(seq), sock))
        if now >= next_beat:
            next_beat = now + 2
            for sock in socks:
                send_frames(sock, beat)

if __name__ == "__main__":
    main()
