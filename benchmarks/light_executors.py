#!/usr/bin/env python3
"""Many light executors in one process, for the scale benchmark.

    python benchmarks/light_executors.py PORT COUNT [--insecure]

Each is a real DEALER connection speaking cw's protocol to the master at
127.0.0.1:PORT (with the cluster's keys from CW_HOME unless --insecure):
it registers, heartbeats, and answers every TASK at once with results that
say "done" (a pickled None), so the master's own cost is what is measured.
"""
from __future__ import annotations

import os
import pickle
import sys
import time

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
    while True:
        for sock, _ in poller.poll(500):
            msg = Message.from_frames(recv_frames(sock))
            if msg.kind is Kind.TASK:
                ids = msg.header["ids"]
                results = {"results": [[tid, "ok", None, 1] for tid in ids], "busy": 1e-6 * len(ids)}
                send_frames(sock, Message(Kind.RESULT, results, (NONE,) * len(ids)).to_frames())
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + 2
            for sock in socks:
                send_frames(sock, beat)


if __name__ == "__main__":
    main()
