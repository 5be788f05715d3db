"""Executors: the processes that run jobs, one at a time, for a worker.

::

    supervisor (cw.worker) ── spawns ──► executor ──DEALER──► master ROUTER
                                           READY → TASK → run job → RESULT → TASK ...

An executor runs each job inside the client's cwd with the client's
sys.path in front, and restores both afterwards. It holds up to
``--prefetch`` tasks beyond the running one (``--batch`` while jobs are
very short; none while they are long: cw.master.scheduler), so it need
not wait a round trip for its next job, and it sends short jobs' results
together, none waiting behind the next job (``cw.worker.outbox``). Its
supervisor starts it as ``python -m cw.executor`` (``Supervisor.spawn``)
and restarts it when it dies.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import os
import sys
import time
import traceback
from collections import deque
from typing import Any, Callable, Optional

import zmq

from .. import lanes, shm
from ..errors import BlobUnavailableError, JobRejectedError
from ..joberrors import dumps_error
from ..protocol import SLOT_MARK, ErrorCode, Kind, Message, Result, Status, beats_apart, job_runs
from ..security import Keys
from ..serialize import dumps_value, loads_labelled_call
from ..transport import NOBLOCK, readable, recv_frames, send_frames
from . import joblog, lane, reaper
from .devices import place, place_back
from .direct import DirectPeers
from .fetch import Fetcher
from .hostcache import HostCache
from .outbox import Flusher, Outbox
from .peer import Peer, peer_header, unknown_peer

log = logging.getLogger(__name__)


_OK = Status.OK.value  # an Enum's .value is a property: dear per job
_ERROR = Status.ERROR.value
_UNREACHABLE = Status.UNREACHABLE.value
_CANCELLED = Status.CANCELLED.value
LISTEN_AFTER = 0.002  # a job this long: the socket is read before the next one
LISTEN_SECONDS = 0.05  # between queued tasks, the master is heard at least this often


class Executor:
    """Runs jobs one at a time, in the order the master sent them."""

    def __init__(self, address: str, identity: bytes, supervisor: str,
                 heartbeat: float = 1.0, liveness: int = 10, keys: Optional[Keys] = None,
                 prefetch: int = 1, batch: int = 64, job_fd: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic, express: bool = False,
                 cluster: Optional[str] = None) -> None:
        # Holding ``prefetch`` tasks beyond the running one, an executor never idles for a
        # round trip to the master between short jobs; the master sends up to ``batch`` at once.
        self.capacity, self.express = 1 + prefetch, express  # express: a spare, with no lane (scheduler)
        self.batch = max(self.capacity, batch) if prefetch else 1
        self.clock = clock  # a test's fake clock; every timing below reads it
        self.peer = Peer(address, identity, heartbeat, liveness, keys, clock, cluster)
        self.supervisor = supervisor
        self.parent = os.getppid()
        self.started = self.stopping = False
        self.listen_at = 0.0  # when the master is next heard, though tasks are queued
        self.tasks: deque = deque()  # (task id, frames), in the order received
        self.outbox = Outbox(self.peer.send)
        self.direct = DirectPeers(keys)  # cw.direct: clients on other hosts, without the master
        self.fetcher = Fetcher(self.peer.send, self.direct, self.direct_route, HostCache.here())
        # Shared with the supervisor: the task running now, so that a death
        # is charged to the right job even when earlier results were unsent.
        self.slot = mmap.mmap(job_fd, 8) if job_fd is not None else None
        self.contexts = Contexts()  # each job's cwd and sys.path, read once per client
        self.devices: dict[int, tuple] = {}  # task id -> (GPU ids, CPU ids) the master gave it
        self.placed: Optional[tuple] = None  # what a job's devices replaced, for _leave
        self.max_message_size = 1 << 62  # until the master's WELCOME
        self._args: Any = None  # the last job's arguments, dropped after its result left
        self.home = os.getcwd()  # where each job's chdir is undone
        self.lane: Optional[zmq.Socket] = None  # opened by run()
        self.lane_address = ""  # its address; without a lane, why not (for `cw status`)
        self.lane_done = self.lane_failed = 0  # lane jobs ended (failed) since a HEARTBEAT said so
        self.lane_told = 0.0  # when a HEARTBEAT last said so
        self.poller = zmq.Poller()
        self.poller.register(self.peer.sock, zmq.POLLIN)

    def register(self) -> None:
        header = peer_header(self.capacity, supervisor=self.supervisor, batch=self.batch,
                             express=self.express)
        if self.supervisor:  # vouched for by it: WELCOME may space our beats (beats_apart)
            header["liveness"], header["heartbeat"] = self.peer.liveness, self.peer.heartbeat
        self.peer.beat_every = self.peer.heartbeat  # until WELCOME says otherwise
        if self.lane is not None:
            header["lane"], header["shm"] = self.lane_address, shm.host_key()
        elif self.lane_address:
            header["lanes_off"] = self.lane_address[:1000]
        self.peer.send(Message(Kind.READY, header))

    def lane_header(self) -> dict:
        """A HEARTBEAT's count of the lane's jobs, for the master's totals."""
        header = {"lane": self.lane_done, "lane_failed": self.lane_failed} if self.lane_done else {}
        self.lane_done = self.lane_failed = 0
        self.lane_told = self.clock()
        return header

    def open_lane(self) -> None:
        """Clients of this host may be lent our lane (cw.lanes): their jobs
        come straight from them, and their results go straight back."""
        self.lane, self.lane_address = (None, "") if self.express else lane.bind()
        if self.lane is not None:
            self.poller.register(self.lane, zmq.POLLIN)
            self.peer.beat_header = self.lane_header

    def run(self) -> None:
        flusher = Flusher(self.outbox)
        flusher.start()
        reaper.count_threads()  # more than these: a job's, whose children are looked for too
        while not self.stopping:
            self.step()
        flusher.stop()
        self.outbox.flush()
        if self.lane_done:
            self.peer.send(Message(Kind.HEARTBEAT, self.lane_header()))
        self.peer.send(Message(Kind.BYE))
        self.peer.close(linger=1000)
        self.direct.close()
        self.fetcher.close()  # this host's copies of blobs it kept
        if self.lane is not None:
            self.lane.close(linger=1000)  # tasks it still held: their clients send them again
            lanes.remove(os.getpid())

    def step(self, timeout: Optional[float] = None, now: Optional[float] = None) -> None:
        """One turn: open the lane and register (the first), hear the master
        when due, run the next task, heartbeat. ``timeout``: the longest wait
        for work when none is queued [default: a heartbeat]. ``now`` stands
        for the clock (read once per turn, and again after a wait, when not
        given); the job's own duration moves it on."""
        if not self.started:
            self.started = True
            self.open_lane()
            self.register()
        given = now is not None
        now = self.clock() if now is None else now
        # Between queued tasks the socket, the parent and the spare files
        # are looked at every LISTEN_SECONDS, not before each job: that
        # costs a short job more than the job itself.
        if not self.tasks or now >= self.listen_at or self.fetcher.pending:
            if os.getppid() != self.parent:
                self.stopping = True
                return
            shm.tidy()
            self.fetcher.tidy(time.monotonic())
            if self.tasks and not self.fetcher.pending:
                self.receive(0)
            else:  # nothing to run, or the next job's blob on its way
                wait = self.peer.heartbeat if timeout is None else timeout
                self.receive(min(wait, LISTEN_SECONDS) if self.tasks else wait)
                now = now if given else self.clock()  # after a wait
            self.listen_at = now + LISTEN_SECONDS
        if self.tasks and not self.stopping:  # stopping: the master requeues the rest at BYE
            now = self.run_next(now)
        if not self.peer.tick(now):
            self.peer.last_heard = now
            if self.peer.follow(self.poller):  # to a successor (cw.succession)
                self.forget_master()
            self.register()
        if self.lane_done and now - self.lane_told >= self.peer.heartbeat:
            self.peer.send(Message(Kind.HEARTBEAT, self.lane_header()))  # busy with the master's too

    def receive(self, timeout: float) -> None:
        if self.lane is not None:
            if timeout > 0 and not readable(self.peer.sock) and not readable(self.lane):
                self.poller.poll(int(timeout * 1000))
            self.receive_lane()
            timeout = 0
        msg = self.peer.recv(timeout)
        forgotten = False
        while msg is not None:
            if msg.kind is Kind.TASK:
                self.take_tasks(msg)
            elif msg.kind is Kind.CANCEL:
                self.drop_task(msg.body.id)
            elif msg.kind is Kind.WELCOME:
                self.max_message_size = msg.body.max_message_size or self.max_message_size
                most = beats_apart(self.peer.heartbeat * self.peer.liveness, self.peer.heartbeat)
                beats = min(max(1, msg.body.beats or 1), most)
                self.peer.beat_every = self.peer.heartbeat * beats
            elif msg.kind is Kind.BLOB or msg.kind is Kind.ERROR and msg.body.code == ErrorCode.NO_BLOB.value:
                error = self.fetcher.arrived(msg, self.clock()) if msg.kind is Kind.BLOB \
                    else self.fetcher.refused()
                if error and self.tasks:
                    self.fail_first(error)
            elif unknown_peer(msg):  # the master does not know us (restarted, or purged us)
                self.forget_master()
                forgotten = True
            msg = self.peer.recv(0)
        if forgotten:  # one READY for all the refusals that piled up
            self.register()

    def take_tasks(self, msg: Message) -> None:
        """A TASK's jobs join the queue; one given GPUs (alone in its TASK) keeps their ids."""
        if msg.body.gpus is not None or msg.body.cpus is not None:
            self.devices[msg.body.ids[0]] = (msg.body.gpus, msg.body.cpus)
        for context, run in job_runs(msg.body, msg.payload):
            self.tasks.extend((tid, (context, *frames)) for tid, frames in run)

    def forget_master(self) -> None:
        """Drop the master's tasks and results: its clients resend (a lane's stay)."""
        self.tasks = deque(task for task in self.tasks if len(task) == 3)
        self.devices.clear()
        self.outbox.drop()
        self.fetcher.reset()

    def drop_task(self, tid: int) -> None:
        """The master's CANCEL of a task not begun: it never runs (one begun runs on)."""
        for i, task in enumerate(self.tasks):
            if task[0] == tid and len(task) == 2:  # the master's, not a lane's
                if i == 0:
                    self.fetcher.reset()  # its blob is no longer needed
                del self.tasks[i]
                self.devices.pop(tid, None)
                dropped = Result(tid, _CANCELLED, "cancelled before it started", 0)
                self.outbox.add(dropped, [], 0.0, self.clock())
                self.outbox.flush()
                return

    def receive_lane(self) -> None:
        """Take the lane's tasks: ``(id, frames, client)``, queued with the master's."""
        assert self.lane is not None
        while readable(self.lane):
            frames = recv_frames(self.lane, NOBLOCK)
            try:
                msg = Message.from_frames(frames[1:])
                if msg.kind is not Kind.TASK:
                    raise ValueError(f"a {msg.kind.name} message")
            except Exception as e:  # its client sends the lane's jobs through the master instead
                log.warning("refused a bad message on the lane: %s", e)
                with contextlib.suppress(zmq.ZMQError):  # its client left meanwhile
                    send_frames(self.lane, [frames[0], *Message(Kind.ERROR, {"error": str(e)}).to_frames()],
                                NOBLOCK)
                continue
            client = frames[0].bytes
            for context, run in job_runs(msg.body, msg.payload):
                self.tasks.extend((tid, (context, *frames), client) for tid, frames in run)

    def run_next(self, now: float) -> float:
        """Run the next task, queued at ``now``; return the time it ended."""
        tid, frames, *client = self.tasks[0]
        if not self.fetcher.ready(tid, frames, now):  # its function or data is on its way
            error = self.fetcher.overdue(now)
            if error:
                self.fail_first(error)
            return now
        self.tasks.popleft()
        started = time.perf_counter()
        status, error, payload = self.run_task(tid, frames, SLOT_MARK if client else tid)
        seconds = time.perf_counter() - started
        now += seconds  # not a clock read per job: dear at 20,000 jobs a second
        if seconds >= LISTEN_AFTER:  # what came meanwhile (a CANCEL of the next) is read before it runs
            self.listen_at = now
        self.post(Result(tid, status, error, len(payload), round(seconds, 6)), payload, client, now)
        self._args = None
        self.peer.last_heard = now  # the master's silence while the job ran is no death
        return now

    def post(self, entry: Result, payload: list, client: list, now: float) -> None:
        """A job's result: a lane's straight back to its client, else to the outbox."""
        if client:
            self.answer_lane(client[0], entry, payload)
        else:
            self.outbox.add(entry, payload, entry.ran or 0.0, now)
        if not self.tasks or self.outbox.due(entry.ran or 0.0, now):
            self.outbox.flush()

    def fail_first(self, error: str) -> None:
        """Fail the first queued job without running it (its blob cannot be had)."""
        tid, _, *client = self.tasks.popleft()
        frame, summary = dumps_error(BlobUnavailableError(error))
        self.post(Result(tid, _ERROR, summary, 1, 0.0), [frame], client, self.clock())

    def answer_lane(self, client: bytes, entry: Result, payload: list) -> None:
        assert self.lane is not None
        try:
            send_frames(self.lane, [client, *Message(Kind.RESULTS, {"results": [entry]},
                                                     tuple(payload)).to_frames()], NOBLOCK)
            self.lane_done += 1  # only what reached its client: the master counts a job resent
            self.lane_failed += entry.status != _OK
        except zmq.ZMQError as e:  # the client is gone, or resent the job through the master
            log.info("a lane result for job %s not sent: %s", entry.id, e)

    def direct_route(self, frame: Any) -> Optional[tuple]:
        """The direct path of the client whose context frame this is, if any
        (none for a malformed context: the job fails when it runs)."""
        with contextlib.suppress(ValueError):
            return self.direct.route(self.contexts.read(frame))
        return None

    def run_task(self, tid: int, frames: tuple, mark: int) -> tuple[str, Optional[str], list]:
        """Run one job; return its status, error summary and payload frames.
        ``mark``: what the job slot says while it runs (its id, or a lane job's mark)."""
        old_path = sys.path[:]
        self._enter(tid, mark)
        label = None
        try:
            ctx = self.contexts.read(frames[0])
            _enter_directory(ctx, tid)
            sys.path[:] = self.contexts.path(ctx["path"], old_path)
            try:
                func, args, kwargs, label = loads_labelled_call(frames[1:])
                joblog.set_job(tid if label is None else label)  # the client's name for it
            except shm.DataUnreachable as exc:  # its data is in another host's memory, or gone
                frame, summary = dumps_error(exc)
                return _UNREACHABLE, summary, [frame]  # its client sends it again inline
            # Unmapping a big shared-memory argument takes milliseconds: not
            # before the result is on its way.
            self._args = args, kwargs
            self.outbox.lend()  # what is held leaves while it runs long
            try:
                value = func(*args, **kwargs)
            finally:
                self.outbox.take_back()
            return _OK, None, _result_frames(value, ctx, self.direct, self.max_message_size)
        except BaseException as exc:  # a job's failure, whatever it is, is its result
            frame, summary = dumps_error(exc)
            log.warning("job %s failed: %s", tid if label is None else label,
                        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:])
            return _ERROR, summary, [frame]
        finally:
            self._leave(old_path)

    def _enter(self, tid: int, mark: int) -> None:
        joblog.set_job(tid)  # the job's prints go to the worker's log, tagged with its id
        self.placed = place(self.devices.pop(tid, None) if mark == tid else None)
        if self.slot is not None:
            self.slot[:8] = mark.to_bytes(8, "little")

    def _leave(self, old_path: list) -> None:
        """Undo what a job changed in this process: its processes, log tag, slot, path, directory."""
        reaper.after_job()  # (when main() installed it)
        joblog.set_job(None)
        if self.slot is not None:
            self.slot[:8] = bytes(8)
        sys.path[:] = old_path
        place_back(self.placed)
        try:
            os.chdir(self.home)
        except OSError:
            pass


def _enter_directory(ctx: dict, tid: int) -> None:
    """The client's directory, for the job's time (undone by ``_leave``)."""
    try:
        os.chdir(ctx["cwd"])
    except OSError as e:
        log.warning("job %s: cannot enter the client's directory: %s", tid, e)


def _result_frames(value: Any, ctx: dict, direct: DirectPeers, max_message_size: int) -> list:
    """A job's value as frames: big buffers in shared memory for a client
    of this host, pushed straight to one of another (``cw.direct``)."""
    owner = _shared_with(ctx)
    frames = dumps_value(value, owner)
    if owner is None and len(frames) > 1:
        route = direct.route(ctx)
        frames = frames if route is None else direct.push(route, frames)
    size = sum(map(len, frames))
    if size > max_message_size:
        raise JobRejectedError(
            f"the job's result is {size} bytes, over the master's --max-message-size "
            f"{max_message_size}; write big results to files instead")
    return frames


class Contexts:
    """The last client context a job came with, parsed once: a TASK's run
    of jobs shares one frame, and a client's jobs share its bytes."""

    def __init__(self) -> None:
        self.raw = b""
        self.frame: Any = None
        self.parsed: dict = {}
        self.joined: list = []
        self.joined_key: tuple = ()

    def read(self, frame: Any) -> dict:
        """The client's cwd and sys.path; a malformed one fails the job, not us."""
        if frame is self.frame:
            return self.parsed
        raw = bytes(frame)
        if raw != self.raw:
            self.parsed, self.raw = _parse_context(raw), raw
        self.frame = frame
        return self.parsed

    def path(self, path: list, own: list) -> list:
        """The client's sys.path in front of ours, computed once per context."""
        key = (self.raw, tuple(own))
        if self.joined_key != key:
            seen = set(path)
            self.joined, self.joined_key = path + [p for p in own if p not in seen], key
        return self.joined


def _parse_context(raw: bytes) -> dict:
    import json

    ctx = json.loads(raw)
    if not (isinstance(ctx, dict) and isinstance(ctx.get("cwd"), str) and isinstance(ctx.get("path"), list)
            and all(isinstance(p, str) for p in ctx["path"])):
        raise ValueError("malformed job context (cwd, sys.path)")
    return ctx


def _shared_with(ctx: dict) -> Optional[int]:
    """The client's pid when it shares our host: big results go to shared memory."""
    pid = ctx.get("pid")
    key = shm.host_key()
    if key is not None and ctx.get("shm") == key and type(pid) is int and pid > 0:
        return pid
    return None

