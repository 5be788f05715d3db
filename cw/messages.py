"""The message kinds of the wire protocol, and one typed record per kind.

``cw.protocol`` codes and checks messages; this module says what they are.
Each kind's record names its header's fields, their types, and which may be
left out (those with a default); ``SCHEMAS`` is derived from the records, so
the check and the type are one thing. A received ``Message`` carries its
header as its record (``Message.body``); receivers read nothing else.
"""
from __future__ import annotations

import enum
import typing
from typing import Any, NamedTuple, Optional


class Kind(enum.Enum):
    """One ASCII byte naming what a message is."""

    HELLO = b"H"  # client -> master: who I am, versions
    WELCOME = b"W"  # master -> client or executor: accepted, master session, limits
    SUBMIT = b"S"  # client -> master: jobs (payload: a context, then its jobs' frames; see job_runs)
    CANCEL = b"C"  # client -> master: drop a queued job
    STARTED = b"A"  # master -> client: these jobs run on a worker (quick ones: said in RESULTS)
    RESULT = b"R"  # executor -> master: outcomes of jobs it ran, batched
    RESULTS = b"Z"  # master -> client: outcomes, batched per turn of the master's loop
    READY = b"Y"  # executor -> master: registered, capacity
    TASK = b"T"  # master -> executor: run these jobs, in order (laid out as SUBMIT)
    DIED = b"D"  # supervisor -> master: an executor died (exit code)
    DRAIN = b"N"  # supervisor -> master: send my executors nothing more
    DEPART = b"P"  # supervisor -> master: leaving; requeue what my executors held
    KILL = b"K"  # master -> supervisor: kill this executor (timeout, cancel, client gone)
    HEARTBEAT = b"B"  # both ways
    BYE = b"X"  # any peer -> master: leaving
    STATUS = b"?"  # request (empty header) and reply (JSON snapshot)
    ERROR = b"E"  # master -> peer: your message was refused, and why
    LEASE = b"L"  # master -> client: an executor's lane you may use (or no longer)
    FETCH = b"F"  # executor -> master -> client: send me this blob (cw.blobs)
    BLOB = b"O"  # client -> master -> executor: a blob's bytes (one frame), or that it is gone

    # Members are singletons: hash them by identity. Enum's own __hash__ is
    # Python code, run at every dict and set lookup on the hot path.
    __hash__ = object.__hash__


class Status(str, enum.Enum):
    """How a job ended, as carried in a RESULT header."""

    OK = "ok"
    ERROR = "error"
    LOST = "lost"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    # Its executor could not map the job's data from shared memory (another
    # host after all, or a file gone): the client sends it again inline.
    UNREACHABLE = "unreachable"


STATUSES = {s.value: s for s in Status}  # faster than Status(value) on the hot path


class Result(NamedTuple):
    """One job's entry in RESULT (executor -> master) and RESULTS (master or
    a lane -> client). On the wire, a JSON array in this order; the last two
    may be left out. ``Message.from_frames`` hands these out, checked.

    ``id`` is the job's id as its receiver knows it: the master's task id in
    RESULT, the client's job id in RESULTS.
    """

    id: int
    status: str  # a Status value
    error: Optional[str]  # a failed job's one-line summary
    frames: int  # payload frames that follow for it: its value, or its exception
    ran: Optional[float] = None  # seconds it ran on its executor
    worker: Optional[str] = None  # host:pid of its executor (RESULTS, when no STARTED said it)


class ErrorCode(str, enum.Enum):
    """Why the master refused a message, as carried in an ERROR header."""

    UNKNOWN_PEER = "unknown-peer"  # say HELLO / READY (again): the master forgot you
    MALFORMED = "malformed"  # the message broke the protocol and was dropped
    UNKNOWN_JOB = "unknown-job"  # no such job (finished, or never held): nothing done
    NO_BLOB = "no-blob"  # FETCH of a job whose client the master no longer holds
    NOTICE = "notice"  # nothing refused: news a client's user must hear (cw.master.notices)

# One record per message shape: its fields, their types, and which may be
# left out (those with a default). ``Message.from_frames`` checks a header
# against its kind's record (types and ranges: ``validate``) and hands the
# receiver ``Message.body``, an instance of it; nothing else reads headers.
# ``Any`` marks a field whose reader checks it (HEARTBEAT.stats: monitor).
Ids = list  # job ids (or counts) on the wire: non-negative ints


class Hello(NamedTuple):  # client -> master
    session: str  # the client's id, stable across reconnections
    host: str
    pid: int
    v: int  # protocol version
    python: str
    cloudpickle: str
    shm: Optional[str] = None  # its shared-memory host key (cw.shm), if it has one
    program: Optional[str] = None  # its script's name, for cw status and the dashboard


class Welcome(NamedTuple):  # master -> client or executor
    session: str  # the master's; a new one means the master restarted
    heartbeat: float
    v: int
    python: str
    cloudpickle: str
    max_message_size: Optional[int] = None
    beats: Optional[int] = None  # an executor's: heartbeats between beats, both ways (beats_apart)


class Submit(NamedTuple):  # client -> master; TASK (master -> executor) has its first three
    ids: Ids
    frames: Optional[Ids] = None  # frames of each job (default 1): see job_runs
    contexts: Optional[Ids] = None  # jobs of each run sharing a context (default: one run)
    retries: Optional[int] = None
    timeout: Optional[float] = None
    expected: Optional[float] = None  # seconds each job should take: only to a worker with that long left
    resources: Optional[Ids] = None  # each job's [cpus, gpus, mem bytes] (cw.resources)


class Task(NamedTuple):
    ids: Ids
    frames: Optional[Ids] = None
    contexts: Optional[Ids] = None
    gpus: Optional[str] = None  # the GPU ids its one job was given: its CUDA_VISIBLE_DEVICES
    cpus: Optional[str] = None  # the CPU ids it was given, where it asked to bind: its affinity


class Cancel(NamedTuple):
    id: int
    force: bool = False
    lane: Optional[str] = None  # a lane job's: the lane it went down


class Started(NamedTuple):
    ids: Ids
    worker: Optional[str] = None  # host:pid


class ResultBatch(NamedTuple):  # RESULT: executor -> master
    results: list  # of Result, decoded
    busy: Optional[float] = None  # seconds it ran jobs since its last RESULT


class Results(NamedTuple):  # RESULTS: master or lane -> client
    results: list  # of Result, decoded


class Ready(NamedTuple):  # executor (or supervisor: procs) -> master
    capacity: int
    host: str
    pid: int
    v: int
    python: str
    cloudpickle: str
    batch: Optional[int] = None
    supervisor: Optional[str] = None  # its supervisor's identity, hex
    procs: Optional[int] = None  # a supervisor's executors
    lane: Optional[str] = None  # its lane's address (cw.lanes)
    shm: Optional[str] = None
    lanes_off: Optional[str] = None  # why it has no lane (for `cw status`)
    express: bool = False  # its worker's spare: quick jobs of a client waiting on others (scheduler)
    left: Optional[float] = None  # a supervisor's: seconds until its worker is stopped (SLURM's time limit)
    cpus: Optional[int] = None  # a supervisor's: what its worker has for jobs' resources (cw.resources)
    mem: Optional[int] = None
    gpus: Optional[str] = None  # GPU ids, comma-separated
    cpu_ids: Optional[str] = None  # the CPUs it may use, for jobs that bind
    liveness: Optional[int] = None  # an executor's: it gives the master up after this many silent beats
    heartbeat: Optional[float] = None  # an executor's: its beat, seconds (protocol.beats_apart)


class Died(NamedTuple):  # supervisor -> master
    executor: str  # identity, hex
    exitcode: int
    signal: int = 0
    job: Optional[int] = None  # the job slot's content: what it was running


class Kill(NamedTuple):  # master -> supervisor
    executor: str


class Heartbeat(NamedTuple):
    lane: Optional[int] = None  # jobs its lane ran since the last beat
    lane_failed: int = 0
    stats: Any = None  # a supervisor's executors' usage (checked by the monitor)


class Error(NamedTuple):  # master -> peer
    error: str
    code: Optional[str] = None  # an ErrorCode value
    id: Optional[int] = None  # the job it concerns


class Lease(NamedTuple):  # master -> client
    lane: Optional[str] = None  # none: the lane is taken back
    worker: Optional[str] = None


class Fetch(NamedTuple):  # executor -> master (id), master -> client (executor)
    blob: str  # its digest, hex
    id: Optional[int] = None  # the task that needs it: how the master finds its client
    executor: Optional[str] = None  # who asks, hex identity: where the BLOB goes
    offset: int = 0  # blobs come in chunks, each asked for in turn
    seal: bool = False  # direct path only: asks for a sealed bulk channel (cw.seal), not a blob


class Blob(NamedTuple):  # client -> master (executor), master -> executor; payload: the bytes
    blob: str
    executor: Optional[str] = None
    missing: bool = False  # the client holds it no longer: no payload
    offset: int = 0  # where this chunk starts
    total: Optional[int] = None  # the blob's size
    bulk: Optional[str] = None  # answering FETCH.seal: where the sealed channel listens; payload: its terms


class Empty(NamedTuple):  # DRAIN, DEPART, BYE, a STATUS request
    pass


RECORDS: dict[Kind, type] = {
    Kind.HELLO: Hello, Kind.WELCOME: Welcome, Kind.SUBMIT: Submit, Kind.CANCEL: Cancel,
    Kind.STARTED: Started, Kind.RESULT: ResultBatch, Kind.RESULTS: Results, Kind.READY: Ready,
    Kind.TASK: Task, Kind.DIED: Died, Kind.DRAIN: Empty, Kind.DEPART: Empty, Kind.KILL: Kill,
    Kind.HEARTBEAT: Heartbeat, Kind.BYE: Empty, Kind.STATUS: Empty, Kind.ERROR: Error,
    Kind.LEASE: Lease, Kind.FETCH: Fetch, Kind.BLOB: Blob,
}


def _schema(record: type) -> dict[str, tuple[type, bool]]:
    """field -> (type, required) of a record: what ``validate`` checks."""
    hints = typing.get_type_hints(record)
    schema = {}
    for name in record._fields:
        hint = hints[name]
        if hint is Any:
            continue
        types = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
        schema[name] = (types[0], name not in record._field_defaults)
    return schema


# field -> (type, required); "int" values are also range-checked.
SCHEMAS: dict[Kind, dict[str, tuple[type, bool]]] = {k: _schema(r) for k, r in RECORDS.items()}
_DEFAULTS = {k: (r._fields, tuple(r._field_defaults.get(f) for f in r._fields), r._make)
             for k, r in RECORDS.items()}


def body_of(kind: Kind, header: dict) -> Any:
    """The record of a validated header (a STATUS reply: the header itself)."""
    if kind in FREE_FORM:
        return header
    fields, defaults, make = _DEFAULTS[kind]
    return make(map(header.get, fields, defaults))


# Kinds whose payload frames are counted by their header (checked below).
BATCHES = frozenset({Kind.SUBMIT, Kind.TASK, Kind.RESULT, Kind.RESULTS})
# Upper bounds of integer fields whose size drives memory (default MAX_INT).
LIMITS = {"capacity": 4096, "batch": 4096, "retries": 10_000, "exitcode": 255, "signal": 128, "v": 255}
MAX_JOB_FRAMES = 1024  # a job's or a result's frames: its pickle and out-of-band buffers
# Reply headers are free-form JSON snapshots: only their type is checked.
FREE_FORM = frozenset({Kind.STATUS})
