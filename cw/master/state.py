"""What the master holds: jobs, clients, executors, and the limits on them.

Plain data, and ``Books``: the tables and counts the master's parts (its
loop, ``peers``, ``jobs``, ``scheduler``, ``leases``, ``monitor``) share,
with the one way they all speak to a peer (``send``, ``refuse``).
"""
from __future__ import annotations

import functools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..blobs import DIGEST_BYTES, REF
from ..protocol import ErrorCode, Hello, Kind, Message, Ready

log = logging.getLogger(__name__)

COUNTS = ("submitted", "done", "lost", "cancelled", "requeued", "malformed", "refused", "duplicates",
          "timeouts", "killed", "unknown_peer", "unknown_job", "laned", "no_blob", "blobs_routed",
          "blob_bytes")


@dataclass(frozen=True)
class Limits:
    """What one message and one client may cost the master."""

    max_message_size: int = 1 << 30
    max_jobs_per_client: int = 1_000_000  # held: queued or running
    max_bytes_per_client: int = 4 << 30

    def check(self, jobs: int, held: int, size: int) -> Optional[str]:
        if jobs >= self.max_jobs_per_client:
            return (f"the master holds {jobs} unfinished jobs of this client, its limit "
                    "(--max-jobs-per-client); submit fewer at once (max_pending) or raise it")
        if held + size > self.max_bytes_per_client:
            return (f"this job's {size} bytes would take this client past "
                    f"--max-bytes-per-client {self.max_bytes_per_client}; wait for results "
                    "or raise the limit")
        return None


def slow_to_fall(cost: Optional[float], sample: float) -> float:
    """A recent cost: quick to rise, slow to fall, so one long job counts at once."""
    return sample if cost is None or sample > cost else 0.8 * cost + 0.2 * sample


class Job:
    """A job the master holds. Slotted: a million queued ones must stay small."""

    __slots__ = ("tid", "client", "jid", "payload", "retries", "size", "timeout", "deadline",
                 "deaths", "cancelled", "executor", "announced", "expected", "needs", "gpus", "cpu_ids")

    def __init__(self, tid: int, client: bytes, jid: int, payload: tuple, retries: int,
                 size: int = 0, timeout: Optional[float] = None) -> None:
        self.tid = tid
        self.client = client
        self.jid = jid  # the id the client gave it
        self.payload = payload  # frames: the client's context, the call, its buffers
        self.retries = retries
        self.size = size
        self.timeout = timeout
        self.deadline: Optional[float] = None  # set while it runs, when it has a timeout
        self.deaths = 0
        self.cancelled = False
        self.executor: Optional[bytes] = None
        self.announced = False  # its client heard where it runs (STARTED, or its result)
        self.expected: Optional[float] = None  # seconds it should take: only to a worker with that long left
        self.needs: Optional[list] = None  # [cpus, gpus, mem] it asked for (cw.master.resources)
        self.gpus: Optional[str] = None  # the GPU ids it was given, while it runs
        self.cpu_ids: Optional[str] = None  # the CPU ids it was given, where it asked to bind


@dataclass(eq=False)
class ClientState:
    identity: bytes
    info: Hello  # what it said in HELLO
    last_seen: float
    queue: deque = field(default_factory=deque)
    jobs: dict = field(default_factory=dict)  # jid -> Job, queued or running
    results: list = field(default_factory=list)  # RESULTS entries to send this turn
    outbox: list = field(default_factory=list)  # their payload frames
    in_ready: bool = False
    held_bytes: int = 0
    done: int = 0
    cost: Optional[float] = None  # recent seconds per job, from its results: may its jobs wait ahead?
    costed: Any = None  # the call frame of the job that last set ``cost`` (see ``function_key``)
    costed_key: Optional[tuple] = None  # its function_key, once asked (``function``)

    def observe(self, ran: float, call: tuple = ()) -> None:
        """A result: how long its job ran; ``call``: its call frame, if any (a 1-tuple)."""
        self.cost = slow_to_fall(self.cost, ran)
        self.costed, self.costed_key = (call[0] if call else None), None

    def function(self) -> Optional[tuple]:
        """``function_key`` of ``costed``: worked out once per result, not
        for each job a TASK takes past the window."""
        if self.costed_key is None:
            self.costed_key = function_key(self.costed)
        return self.costed_key


def function_key(call: Any) -> Optional[tuple]:
    """Which function a job's call frame calls, to compare: a blob's digest
    (``cw.blobs``), or the length and the first and last 64 bytes of the
    function's pickle (not all of it: that may be 1 MiB); None for a frame
    too short to say. Nothing is unpickled."""
    if call is None or len(call) < 4:
        return None
    view = memoryview(call)
    if view[:4] == REF:
        return (bytes(view[4:4 + DIGEST_BYTES]),)
    end = 4 + int.from_bytes(view[:4], "little")
    return end, bytes(view[4:min(end, 68)]), bytes(view[max(4, end - 64):end])


@dataclass(eq=False)
class ExecutorState:
    identity: bytes
    info: Ready  # what it said in READY
    last_seen: float
    capacity: int  # 0 while draining or being killed: no more tasks
    running: dict = field(default_factory=dict)  # tid -> Job, in the order sent
    done: int = 0
    killed: bool = False
    batch: int = 0  # how many tasks it accepts at most when they are short
    cost: Optional[float] = None  # recent seconds per job, as it reports them
    offered: bool = False  # in the scheduler's ``free`` line
    died_in: Optional[int] = None  # the task it was running when it died, if known
    ends: Optional[float] = None  # a supervisor's: when its worker is stopped (its time limit), or None
    pool: Any = None  # a supervisor's: its worker's resources (cw.master.resources.Pool)
    leased_to: Optional[bytes] = None  # the client its lane is lent to (cw.lanes)
    lane_client: Optional[bytes] = None  # the last one it was lent to: whose jobs its lane runs
    beats: int = 1  # heartbeats between beats, both ways (protocol.beats_apart)
    name: str = field(init=False)  # host:pid, as results and STARTED name it

    def __post_init__(self) -> None:
        self.name = f"{self.info.host}:{self.info.pid}"  # info never changes

    def observe(self, busy: float, jobs: int) -> None:
        """Learn how long its jobs take: quick to rise, slow to fall, so a long
        job stops the batching of tasks at once."""
        self.cost = slow_to_fall(self.cost, busy / jobs)

    @functools.cached_property
    def supervisor(self) -> Optional[bytes]:
        """The identity of the supervisor that started this executor, if known."""
        try:
            return bytes.fromhex(self.info.supervisor or "") or None
        except ValueError:
            return None


@dataclass(eq=False)
class Books:
    """What the master knows of its peers, and how it speaks to them.

    One of these per master, shared by its parts: each reads and changes
    the tables (one thread: no locks), and none holds a peer of its own.
    """

    send: Callable[..., None]  # (identity, Message, legacy=False)
    heartbeat: float
    liveness: int
    limits: Limits
    port: int = 0
    clients: dict = field(default_factory=dict)  # identity -> ClientState
    executors: dict = field(default_factory=dict)  # identity -> ExecutorState
    supervisors: dict = field(default_factory=dict)  # identity -> ExecutorState (capacity 0)
    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    malformed: dict = field(default_factory=dict)  # identity -> messages refused
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: float = field(default_factory=time.time)
    moved: bool = False  # a submit or a result came since the last blocking wait
    # When each peer was last sent anything: a beat is due a beat after that
    # (cw.master.beats; 10,000 busy executors need no 10,000 beats a second).
    spoken: dict = field(default_factory=dict)
    parked: set = field(default_factory=set)  # idle executors with no queued job they could finish in time

    def refuse(self, identity: bytes, reason: str, jid: Optional[int] = None,
               code: ErrorCode = ErrorCode.MALFORMED, legacy: bool = False) -> None:
        """Count and drop a bad message; tell the peer why (``legacy``: in the
        layout of protocols 1 to 3, which it speaks); log once per peer."""
        self.counts[code.value.replace("-", "_")] += 1
        if identity not in self.malformed:
            if len(self.malformed) > 10_000:
                self.malformed.clear()
            level = logging.WARNING if code is ErrorCode.MALFORMED else logging.INFO
            log.log(level, "dropped message from peer %s: %s", identity.hex()[:16], reason)
        self.malformed[identity] = self.malformed.get(identity, 0) + 1
        header: dict = {"error": reason[:1000], "code": code.value}
        if jid is not None:
            header["id"] = jid
        self.send(identity, Message(Kind.ERROR, header), legacy)

    def unknown(self, identity: bytes, what: str = "client: send HELLO first") -> None:
        self.refuse(identity, f"unknown {what}", None, ErrorCode.UNKNOWN_PEER)
