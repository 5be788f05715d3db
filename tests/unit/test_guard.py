"""The master's guard (cw.master.guard) sheds only connections that may
still be unauthenticated: never one open past the handshake window (it
authenticated, though it may not have spoken), never one just accepted."""
import os
import socket
import subprocess
import sys

import zmq

from cw.master.guard import HANDSHAKE_SECONDS, MIN_AGE, Guard


def test_only_connections_inside_the_handshake_window_and_past_min_age_are_shed():
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    guard = Guard(sock, port)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        now = 1000.0
        old, idle, new = (p[0] for p in pairs)
        for conn, at in ((old, now - HANDSHAKE_SECONDS - 2), (idle, now - 1.0), (new, now - MIN_AGE / 2)):
            guard.pending[conn.fileno()] = (os.fstat(conn.fileno()).st_ino, at)
        guard.counted = now  # (no recount from /proc: the spare below stands)
        guard.spare = -3  # out of descriptors: shed what may be shed
        guard.trim(now)
        assert list(guard.pending) == [new.fileno()] and guard.shed == 1
        assert pairs[1][1].recv(1) == b""  # the idle one was shut down: its peer sees the end
        for conn in (old, new):  # the others were not
            conn.setblocking(False)
            assert conn.send(b"x") == 1
    finally:
        for a, b in pairs:
            a.close()
            b.close()
        guard.mon.close()
        sock.close()


def test_a_master_imports_at_its_start_what_its_welcome_needs():
    """At the descriptor limit another user's connections filled, no import
    can open its files: cloudpickle (whose version every WELCOME carries)
    must be in by the time the master listens. A fresh process, so that no
    earlier test imported it."""
    probe = ("import sys\nfrom cw.master.loop import Master\nassert 'cloudpickle' not in sys.modules\n"
             "m = Master('127.0.0.1', 0)\nprint('cloudpickle' in sys.modules)\nm.close()\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr
