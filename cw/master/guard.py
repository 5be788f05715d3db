"""Connections that never authenticate must not take the master's file descriptors.

Anyone who can reach the master's port can open TCP connections to it; each
costs the master one descriptor until its handshake fails or times out
(``HANDSHAKE_SECONDS``, set on the ROUTER). Without a bound, a few idle
scripts of another user fill the descriptor table, and libzmq, failing to
accept, spins; new clients, workers and ``cw status`` cannot get in.

``Guard`` watches the ROUTER's connections through a socket monitor, from
the master's own poll loop (no thread)::

    ACCEPTED (fd)        -> pending, with the socket's inode and the time
    a message from fd    -> authenticated: no longer pending (``heard``,
                            from ZMQ_SRCFD of the message's first frame)
    DISCONNECTED (fd)    -> gone; if still pending: it never authenticated
    HANDSHAKE_FAILED_*   -> counted as refused
    ACCEPT_FAILED EMFILE -> the master is out of file descriptors: said in the log

When the descriptors left (the soft limit, which the master raised to the
hard limit at start, less those open) fall below a reserve kept for
authenticated peers, or more than ``MAX_PENDING`` connections are pending,
the oldest pending connection is shut down (a ``shutdown(2)`` on a
duplicate of libzmq's descriptor, once its inode shows it is still that
connection; libzmq then closes it as if the peer had gone). libzmq closes
a connection whose handshake has not completed within
``HANDSHAKE_SECONDS``, so one still open after that has authenticated,
though it may not have spoken yet (an executor busy with a long job after
a master restart): it is no longer pending, and never shed. A connection
younger than ``MIN_AGE`` is not shed either: an admitted peer completes
its handshake and speaks within a few milliseconds. What was refused or
closed is logged once a minute at most, never once per connection.

The room shed is taken again at once by the connections the kernel queued
for the port, up to libzmq's listen backlog (``ZMQ_BACKLOG``, 100): that is
why the master keeps libzmq's default. A deep backlog (tried: 4096) refills
the reserve faster than it is shed, and the master's own files fail with
EMFILE under a flood.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
import socket
from collections import OrderedDict

import zmq
from zmq.utils.monitor import recv_monitor_message  # imported now: at the limit no file opens

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 5.0  # an accepted connection has this long to complete its handshake
MAX_PENDING = 1024  # connections accepted, not yet heard from
MIN_AGE = 0.05  # seconds a new connection has to authenticate and speak before it may be shed
REPORT_SECONDS = 60.0  # at most one log line per this long for each kind of trouble
EVENT_BATCH = 1000  # monitor events read per turn of the master's loop
COUNT_SECONDS = 0.25  # how often the open descriptors are counted (a listing of /proc/self/fd)
EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_ACCEPT_FAILED | zmq.EVENT_DISCONNECTED
          | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_SRCFD = int(zmq.SRCFD)


def reserve(limit: int) -> int:
    """Descriptors kept for authenticated peers (and the master's own files)."""
    return max(64, limit // 8)


class Guard:
    def __init__(self, sock: zmq.Socket, port: int) -> None:
        self.port = port
        addr = f"inproc://cw-guard-{os.urandom(6).hex()}"
        sock.monitor(addr, EVENTS)
        # Unbounded: a lost ACCEPTED would be a connection never shed (libzmq's
        # end of the pipe holds 1000 events; an inproc pipe is unbounded when
        # either end's high-water mark is 0).
        self.mon: zmq.Socket = sock.context.socket(zmq.PAIR)
        self.mon.setsockopt(zmq.RCVHWM, 0)
        self.mon.setsockopt(zmq.LINGER, 0)
        self.mon.connect(addr)
        self.pending: OrderedDict[int, tuple[int, float]] = OrderedDict()  # fd -> (inode, accepted at)
        self.limit, self.spare, self.counted = 0, 1 << 30, -COUNT_SECONDS
        self.refused = self.dropped = self.shed = self.exhausted = 0
        self.reported = {"refused": -REPORT_SECONDS, "exhausted": -REPORT_SECONDS}

    def heard(self, frame: zmq.Frame) -> None:
        """A message came through this connection: its peer holds an admitted key."""
        self.pending.pop(frame.get(_SRCFD), None)

    def handle(self, now: float) -> None:
        """Read what the monitor reported; shed connections if descriptors run short."""
        for _ in range(EVENT_BATCH):  # libzmq repeats a failed accept at once: no endless drain
            if not self.mon.poll(0):
                break
            event = recv_monitor_message(self.mon)
            kind, value = int(event["event"]), int(event["value"])
            if kind == zmq.EVENT_ACCEPTED:
                self.accepted(value, now)
            elif kind == zmq.EVENT_DISCONNECTED:
                self.spare += 1
                if self.pending.pop(value, None) is not None:
                    self.dropped += 1
            elif kind in FAILED:
                self.refused += 1
            elif kind == zmq.EVENT_ACCEPT_FAILED and value in (errno.EMFILE, errno.ENFILE):
                self.exhausted += 1
                self.spare = min(self.spare, -1)  # libzmq retries at once: shed now
                self.counted = -COUNT_SECONDS  # and count afresh
        self.trim(now)
        self.report(now)

    def accepted(self, fd: int, now: float) -> None:
        self.spare -= 1
        try:
            self.pending[fd] = (os.fstat(fd).st_ino, now)
        except OSError:  # already closed again
            return
        self.pending.move_to_end(fd)

    def trim(self, now: float) -> None:
        """Shed the oldest pending connections while descriptors or room run short."""
        if self.pending and (now - self.counted >= COUNT_SECONDS or self.counted < 0):
            self.count(now)
        authenticated = now - HANDSHAKE_SECONDS - 1.0  # open since: its handshake succeeded
        while self.pending and next(iter(self.pending.values()))[1] < authenticated:
            self.pending.popitem(last=False)
        while self.pending and (self.spare < 0 or len(self.pending) > MAX_PENDING):
            fd, (inode, at) = next(iter(self.pending.items()))
            if now - at < MIN_AGE:
                break
            del self.pending[fd]
            if _shut_down(fd, inode):
                self.shed += 1
                self.spare += 1

    def count(self, now: float) -> None:
        """The descriptors left above the reserve, counted afresh."""
        self.counted = now
        self.limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:  # not Linux: count nothing, shed only past MAX_PENDING
            return
        if self.limit != resource.RLIM_INFINITY:
            self.spare = self.limit - in_use - reserve(self.limit)

    def report(self, now: float) -> None:
        if self.exhausted and now - self.reported["exhausted"] >= REPORT_SECONDS:
            self.reported["exhausted"] = now
            log.error("the master is out of file descriptors (limit %s): it failed to accept %d "
                      "connection(s); new clients and workers cannot connect. See who holds "
                      "connections to it (ss -tnp 'sport = :%d'), or raise the hard limit "
                      "(ulimit -Hn) where the master starts", self.limit or "?", self.exhausted, self.port)
            self.exhausted = 0
        if (self.refused or self.dropped or self.shed) and now - self.reported["refused"] >= REPORT_SECONDS:
            self.reported["refused"] = now
            log.warning("unauthenticated connections to port %d: %d handshake(s) refused, %d connection(s) "
                        "closed before authenticating (no handshake within %g s, or a failed one), "
                        "%d idle one(s) shut to keep descriptors for admitted peers (said once a "
                        "minute at most)", self.port, self.refused, self.dropped, HANDSHAKE_SECONDS,
                        self.shed)
            self.refused = self.dropped = self.shed = 0

    def close(self) -> None:
        self.mon.close(linger=0)


def _shut_down(fd: int, inode: int) -> bool:
    """Shut down libzmq's connection on ``fd`` if it still is the socket with
    ``inode`` (a descriptor number is reused once closed). No descriptor is
    opened for it (none may be left): the socket object wraps ``fd`` and lets
    go of it, unclosed; libzmq closes it when it sees the connection end."""
    try:
        if os.fstat(fd).st_ino != inode:
            return False
        sock = socket.socket(fileno=fd)
    except OSError:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        sock.detach()
