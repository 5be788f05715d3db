"""Workers: a supervisor process and the executor processes it keeps alive.

::

    supervisor ── spawns N ──► executor (cw.executor) ──DEALER──► master ROUTER
        │
        └─ DEALER ─► master: READY(capacity 0), HEARTBEAT, DIED(executor, exit code)

When an executor dies (segfault, ``os._exit``, SIGKILL), the supervisor
tells the master at once, so its job is requeued, and starts a new one.
Executors die with their supervisor (PR_SET_PDEATHSIG, and a parent check
in their loop), so a killed worker leaves no orphans.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from .. import lanes
from ..protocol import SLOT_MARK, Kind, Message
from ..security import Keys
from .peer import Peer, peer_header, unknown_peer
from .usage import Usage

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the supervisor dies."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the executor's own parent check covers it


class Supervisor:
    """Keeps ``procs`` executors running and reports the ones that die."""

    def __init__(self, host: str, port: int, procs: int = 1, *, heartbeat: float = 1.0,
                 liveness: int = 10, grace: float = 30.0, keys: Optional[Keys] = None,
                 cluster: str = "default", prefetch: int = 1, batch: int = 64,
                 master_timeout: Optional[float] = None, express: bool = True,
                 time_left: Optional[float] = None, idle_timeout: Optional[float] = None,
                 resources: Optional[dict] = None, follow: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # a test's fake clock; every timing below reads it
        self.prefetch, self.batch = prefetch, batch
        # A master silent this long (counted from our start, so a head that
        # vanished before its first heartbeat counts too) is presumed gone
        # for good: the worker exits rather than outlive it (SSH launcher).
        self.master_timeout = master_timeout
        self.heard_at = clock()
        self.ends = None if time_left is None else self.heard_at + time_left  # its time limit, said at READY
        self.idle_timeout, self.busy_at = idle_timeout, self.heard_at  # idle this long: leave (``idle_for``)
        self.cluster = cluster
        self.resources = resources or {}  # what jobs' resources count against (cw.resources)
        self.exit_code = 0
        self.host, self.port, self.procs = host, port, procs
        self.address, self.grace = f"tcp://{host}:{port}", grace
        self.identity = b"s" + os.urandom(8)
        # ``follow``: when the master goes silent, to where master.json says it went.
        self.peer = Peer(self.address, self.identity, heartbeat, liveness, keys, clock,
                         cluster if follow else None)
        # Slot ``procs``, if ``express``: a spare executor that takes one
        # quick job at a time, of a client with nothing else out (so that
        # it does not wait behind another client's long jobs), and no lane.
        slots = procs + express
        self.express = express
        self.slots: list[Optional[subprocess.Popen]] = [None] * slots
        self.ids: list[bytes] = [b""] * slots
        self.restart_at, self.failures, self.spawned_at = [0.0] * slots, [0] * slots, [0.0] * slots
        self.running: list[Optional[mmap.mmap]] = [None] * slots  # each executor's current task
        self.started = self.stopping = False
        self.usage = Usage()  # CPU % and RSS of the executors, in each HEARTBEAT
        self.lane_seen: set[int] = set()  # executors running a lane's job at the last look
        self.lane_told: set[int] = set()  # those the master was told of
        self.peer.beat_header = lambda: self.usage.header(
            [(self.ids[i], p.pid, self.on_lane(i)) for i, p in enumerate(self.slots) if p is not None])

    def report_lanes(self) -> None:
        """Tell the master at once (not at the next heartbeat) when an
        executor has run a lane's job for a while, or stopped: it must not
        time out a job of its own waiting behind (cw.lanes)."""
        now = {i for i, proc in enumerate(self.slots) if proc is not None and self.on_lane(i)}
        lasting = now & self.lane_seen  # on at two looks in a row, 0.1 s apart: not a short job's
        if lasting != self.lane_told:
            self.lane_told = lasting
            self.peer.send(Message(Kind.HEARTBEAT, self.peer.beat_header()))
        self.lane_seen = now

    def on_lane(self, i: int) -> bool:
        """Whether executor ``i`` runs a job a client sent down its lane (cw.lanes)."""
        word = self.running[i]
        return word is not None and int.from_bytes(word[:8], "little") == SLOT_MARK

    def executor_command(self, ident: bytes, express: bool = False) -> list[str]:
        """How executor ``ident`` is started (``python -m cw.executor``)."""
        queue = ["--prefetch", "0", "--batch", "1", "--express"] if express else \
            ["--prefetch", str(self.prefetch), "--batch", str(self.batch)]
        return [sys.executable, "-m", "cw.executor", self.host, "--port", str(self.port),
                "--executor", ident.hex(), "--supervisor", self.identity.hex(),
                "--heartbeat", str(self.peer.heartbeat), "--liveness", str(self.peer.liveness),
                "--cluster", self.cluster, *queue, *(["--insecure"] if self.peer.keys is None else []),
                *(["--follow"] if self.peer.cluster else [])]

    def spawn(self, i: int, now: float) -> None:
        ident = b"e" + os.urandom(8)
        cmd = self.executor_command(ident, express=i == self.procs)
        fd = _shared_word()
        if fd is not None:
            cmd += ["--job-fd", str(fd)]
            self.running[i] = mmap.mmap(fd, 8)
        try:
            # Its own process group, so a kill takes the job's children with it.
            self.slots[i] = subprocess.Popen(cmd, preexec_fn=_die_with_parent, start_new_session=True,
                                             pass_fds=() if fd is None else (fd,))
        finally:
            if fd is not None:
                os.close(fd)
        self.ids[i] = ident
        self.spawned_at[i] = now

    def register(self) -> None:
        left = {} if self.ends is None else {"left": max(0.0, round(self.ends - self.clock(), 1))}
        self.peer.send(Message(Kind.READY, peer_header(0, procs=self.procs, **left, **self.resources)))

    def run(self) -> None:
        try:
            self.loop()
        finally:
            self.shutdown()

    def loop(self) -> None:
        while not self.stopping:
            self.step(0.1)

    def step(self, timeout: float = 0.0, now: Optional[float] = None) -> None:
        """One turn: register (the first), restart dead executors, wait up to
        ``timeout`` for the master, obey it, heartbeat. ``now`` stands for
        the clock (read before and after the wait when not given)."""
        if not self.started:
            self.started = True
            self.register()
            log.info("worker pid %d: %d executor(s)%s for %s", os.getpid(), self.procs,
                     " and an express one" if self.express else "", self.address)
        self.check_children(self.clock() if now is None else now)
        self.report_lanes()
        msg = self.peer.recv(timeout)
        now = self.clock() if now is None else now
        if msg is not None:
            self.heard_at = now
        if self.idle_timeout is not None and self.idle_for(now) > self.idle_timeout:
            log.info("worker pid %d: no job for %g s (--idle-timeout); leaving", os.getpid(),
                     self.idle_timeout)
            self.stopping = True
        if self.master_lost(now):
            log.error("no word from the master at %s for %g s (--master-timeout); exiting",
                      self.address, self.master_timeout)
            self.exit_code, self.stopping = 3, True
        elif msg is not None and unknown_peer(msg):
            self.register()
        elif msg is not None and msg.kind is Kind.KILL:
            self.kill(msg.body.executor)
        error = self.peer.handshake_error()
        if error:
            log.error("%s", error)
            self.exit_code, self.stopping = 2, True
        if not self.peer.tick(now):
            self.peer.last_heard = now
            self.follow()
            self.register()

    def follow(self) -> None:
        """The master went silent: if master.json names another, go there;
        executors started from now on go there too (each running one
        follows by itself)."""
        if self.peer.follow():
            self.address = self.peer.address
            self.host, port = self.address[len("tcp://"):].rsplit(":", 1)
            self.port = int(port)

    def idle_for(self, now: float) -> float:
        """Seconds since an executor was last seen running a job (each writes
        the job it runs into its word, and zero after it)."""
        if any(word is not None and any(word[:8]) for word in self.running) or None in self.running:
            self.busy_at = now  # busy, or an executor without a word: never idle for sure
        return now - self.busy_at

    def master_lost(self, now: float) -> bool:
        return self.master_timeout is not None and now - self.heard_at > self.master_timeout

    def check_children(self, now: float) -> None:
        for i, proc in enumerate(self.slots):
            if proc is None:
                if now >= self.restart_at[i]:
                    self.spawn(i, now)
                continue
            code = _ended(proc)
            if code is None:
                continue
            log.warning("executor pid %d died with %s; restarting it", proc.pid, _describe(code))
            died = {"executor": self.ids[i].hex(), "exitcode": max(code, 0), "signal": max(-code, 0)}
            word = self.running[i]
            if word is not None and any(word[:8]):
                died["job"] = int.from_bytes(word[:8], "little")
            self.peer.send(Message(Kind.DIED, died))
            lanes.remove(proc.pid)  # a killed executor could not remove its lane's socket
            self.slots[i] = None
            # A slot that keeps dying at start (broken environment) backs off.
            self.failures[i] = self.failures[i] + 1 if now - self.spawned_at[i] < 2 else 0
            self.restart_at[i] = now + min(10.0, 0.1 * 2 ** self.failures[i]) if self.failures[i] else now

    def kill(self, executor: str) -> None:
        """The master gave up on this executor's job: kill it (it is restarted)."""
        for i, proc in enumerate(self.slots):
            if proc is not None and self.ids[i].hex() == executor and proc.poll() is None:
                log.info("killing executor pid %d at the master's request", proc.pid)
                _kill_group(proc)

    def shutdown(self) -> None:
        """Drain: no new tasks, running jobs get ``grace`` seconds, the rest go back."""
        self.peer.send(Message(Kind.DRAIN))
        live = [p for p in self.slots if p is not None and p.poll() is None]
        for proc in live:
            proc.terminate()  # an executor finishes its job, then leaves
        deadline = self.clock() + self.grace
        while any(_ended(p) is None for p in live) and self.clock() < deadline:
            self.peer.recv(0.1)
            self.peer.tick(self.clock())  # still alive: the master must not presume us dead
        for proc in live:
            if proc.poll() is None:
                log.warning("executor pid %d still busy after %g s (--grace); its job goes back "
                            "to the queue", proc.pid, self.grace)
                _kill_group(proc)
                proc.wait()
        for proc in live:
            lanes.remove(proc.pid)
        # DEPART hands back whatever is left, without counting a retry.
        self.peer.send(Message(Kind.DEPART))
        self.peer.close(linger=2000)
        log.info("worker pid %d stopped", os.getpid())


def _shared_word() -> Optional[int]:
    """An 8-byte memory file an executor and its supervisor both map (Linux)."""
    try:
        fd = os.memfd_create("cw-running-task")
    except (AttributeError, OSError):
        return None
    os.ftruncate(fd, 8)
    return fd


def _describe(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:  # real-time signals have no name
        return f"signal {-code}"


def _ended(proc: subprocess.Popen) -> Optional[int]:
    """An executor's exit status once it ended (else None), after killing
    what its jobs left in its process group: a crash or a SIGKILL gives it
    no time to (``cw.worker.reaper``). The group's id is the executor's pid,
    which no new process takes before the executor is reaped, so the kill
    comes first."""
    if proc.returncode is not None or not hasattr(os, "waitid"):
        return proc.poll()
    try:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return None
    except ChildProcessError:
        return proc.poll()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left in it
    return proc.poll()


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL an executor and every process its job started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
