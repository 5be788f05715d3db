#!/usr/bin/env python3
"""Many light executors in one process, for the scale benchmark.

    python benchmarks/light_executors.py PORT COUNT [--insecure] [--delay MS]

Each is a real DEALER connection speaking cw's protocol to the master at
127.0.0.1:PORT (with the cluster's keys from CW_HOME unless --insecure):
it registers (again whenever the master says it does not know it),
heartbeats, and answers every TASK at once with results that
say "done" (a pickled None), so the master's own cost is what is measured.
As a real worker's, they have a supervisor, one per process (a node of
COUNT cores), which beats every heartbeat and vouches for them: they beat
as often as their WELCOME says (``beats``), as real executors do.
With ``--delay MS`` each runs its jobs one after another, each taking MS
milliseconds of doing nothing (a job that sleeps): a result leaves MS after
its job started, as from a real executor, however many there are.
"""
from __future__ import annotations

import heapq
import itertools
import os
import pickle
import select
import sys
import time
from collections import deque
from typing import Optional

import zmq

from cw.cluster import cluster_dir
from cw.protocol import Kind, Message, versions
from cw.security import apply_client, client_keys
from cw.transport import recv_frames, send_frames
from cw.worker.peer import unknown_peer

NONE = pickle.dumps(None, protocol=5)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: enum flags cost more than the call


class Light:
    """``count`` light executors: their sockets, and with a delay their queues."""

    def __init__(self, port: int, count: int, keys: object, delay: Optional[float]) -> None:
        ctx = zmq.Context.instance()
        # epoll on the sockets' descriptors, not zmq.Poller: a poll over 250
        # sockets costs 250 checks whichever one is ready, which made the
        # load generator, not the master, the bottleneck of 10,000.
        self.epoll = select.epoll()
        self.by_fd: dict = {}
        self.socks = []
        self.supervisor = self.dealer(ctx, b"s", port, keys)
        self.sup_ready = Message(Kind.READY, {"capacity": 0, "procs": count, "host": "light",
                                              "pid": os.getpid(), **versions()}).to_frames()
        send_frames(self.supervisor, self.sup_ready)
        self.ready = Message(Kind.READY, {"capacity": 2, "batch": 64, "host": "light", "pid": os.getpid(),
                                          "supervisor": self.supervisor.identity.hex(), "liveness": 10,
                                          "heartbeat": 1.0, **versions()}).to_frames()
        self.beats: dict = {}  # socket -> seconds between its beats (its WELCOME's ``beats``)
        for _ in range(count):
            sock = self.dealer(ctx, b"e", port, keys)
            send_frames(sock, self.ready)
            self.by_fd[sock.FD] = sock
            self.epoll.register(sock.FD, select.EPOLLIN | select.EPOLLET)
            self.socks.append(sock)
        self.delay = delay
        self.sent: dict = {}  # socket -> when it last sent a result
        self.queues = {sock: deque() for sock in self.socks}  # with a delay: jobs not yet run
        self.due: list = []  # heap of (when the running job ends, n, socket)
        self.seq = itertools.count()  # ties in the heap: never compare sockets

    def dealer(self, ctx: zmq.Context, prefix: bytes, port: int, keys: object) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.identity = prefix + os.urandom(8)
        apply_client(sock, keys)
        sock.connect(f"tcp://127.0.0.1:{port}")
        return sock

    def drain(self, sock: zmq.Socket) -> None:
        """Every message the socket holds. Its descriptor signals a change,
        edge-triggered, and any send may take that signal: so after each
        read or write of a socket, this."""
        while sock.get(_EVENTS) & _POLLIN:
            self.take(sock)

    def take(self, sock: zmq.Socket) -> None:
        msg = Message.from_frames(recv_frames(sock))
        if unknown_peer(msg):  # its READY was lost (a handshake shed under load): again
            send_frames(sock, self.ready)
        elif msg.kind is Kind.WELCOME:
            self.beats[sock] = msg.header.get("beats") or 1
        elif msg.kind is Kind.TASK and self.delay is None:
            ids = msg.header["ids"]
            results = {"results": [[tid, "ok", None, 1, 1e-6] for tid in ids], "busy": 1e-6 * len(ids)}
            send_frames(sock, Message(Kind.RESULT, results, (NONE,) * len(ids)).to_frames())
            self.sent[sock] = time.monotonic()
        elif msg.kind is Kind.TASK:
            if not self.queues[sock]:
                heapq.heappush(self.due, (time.monotonic() + self.delay, next(self.seq), sock))
            self.queues[sock].extend(msg.header["ids"])

    def finish(self, now: float) -> None:
        """Answer the jobs whose time is up; start each one's next."""
        while self.due and self.due[0][0] <= now:
            _, _, sock = heapq.heappop(self.due)
            tid = self.queues[sock].popleft()
            results = {"results": [[tid, "ok", None, 1, self.delay]], "busy": self.delay}
            send_frames(sock, Message(Kind.RESULT, results, (NONE,)).to_frames())
            self.sent[sock] = now
            if self.queues[sock]:
                heapq.heappush(self.due, (now + self.delay, next(self.seq), sock))
            self.drain(sock)

    def run(self) -> None:
        beat = Message(Kind.HEARTBEAT).to_frames()
        next_beat = time.monotonic() + 1
        for sock in self.socks:
            self.drain(sock)
        while True:
            wait = 0.5 if not self.due else max(0.0, self.due[0][0] - time.monotonic())
            for fd, _ in self.epoll.poll(wait):
                self.drain(self.by_fd[fd])
            now = time.monotonic()
            self.finish(now)
            if now >= next_beat:  # as a real worker: its supervisor, and executors silent a while
                next_beat = now + 1
                send_frames(self.supervisor, beat)
                self.drain_supervisor()
                for sock in self.socks:
                    if self.sent.get(sock, 0.0) < now - self.beats.get(sock, 1):
                        send_frames(sock, beat)
                        self.sent[sock] = now
                        self.drain(sock)

    def drain_supervisor(self) -> None:
        """What the master told the supervisor (beats, mostly): read, so it does not pile up."""
        while self.supervisor.get(_EVENTS) & _POLLIN:
            if unknown_peer(Message.from_frames(recv_frames(self.supervisor))):
                send_frames(self.supervisor, self.sup_ready)


def main() -> None:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    keys = None if "--insecure" in sys.argv else client_keys(cluster_dir())
    delay = float(sys.argv[sys.argv.index("--delay") + 1]) / 1000 if "--delay" in sys.argv else None
    Light(port, count, keys, delay).run()


if __name__ == "__main__":
    main()
