"""Wire protocol: message kinds, frame layout, encode/decode, validation.

Every message is a ZeroMQ multipart message::

    [b"CW" + version byte + kind (1 ascii byte) + header (compact JSON)] [payload ...]

(Protocols 1 to 3 sent the magic, the kind and the header as three frames;
one frame costs every hop less. ``peer_version`` reads the version of a
peer in either layout, and ``Message.to_legacy_frames`` answers an old peer
in its own, so it is told to upgrade rather than left waiting.)

Headers are JSON objects (never pickle) and are validated against a small
schema per kind, so a malformed or hostile message can at worst be dropped.
Payload frames are opaque bytes: the master routes them without looking.
"""
from __future__ import annotations

import json
import json.encoder
import json.scanner
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import zmq

from .errors import ProtocolError
from .messages import (  # noqa: F401  (the message kinds and records, re-exported)
    BATCHES,
    FREE_FORM,
    LIMITS,
    MAX_JOB_FRAMES,
    RECORDS,
    SCHEMAS,
    STATUSES,
    Blob,
    Cancel,
    Died,
    Empty,
    Error,
    ErrorCode,
    Fetch,
    Heartbeat,
    Hello,
    Kill,
    Kind,
    Lease,
    Ready,
    Result,
    ResultBatch,
    Results,
    Started,
    Status,
    Submit,
    Task,
    Welcome,
    body_of,
)

# 5: a result whose shared-memory data its executor could not map has status
# "unreachable" (4 said so in its error text); result entries may carry null
# for the seconds it ran and the worker.
# 6: FETCH and BLOB: a big function travels once per executor, by reference.
# 7: a function's or share()d object's pickle may be packed, its big buffers
# after it (cw.pickling.pack): an executor of 6 could not unpickle it.
PROTOCOL_VERSION = 7
MAGIC = b"CW" + bytes([PROTOCOL_VERSION])
DEFAULT_PORT = 5494
MAX_HEADER_BYTES = 64 * 1024
# A STATUS reply describes every worker and executor: a cluster of thousands
# outgrows the limit above, so this kind alone may be bigger.
MAX_STATUS_BYTES = 16 * 1024 * 1024
MAX_STRING = 16 * 1024
MAX_INT = 2**62
# A lane job's mark in the executor's job slot: the supervisor reports a
# death under it (DIED.job), and the master charges it to no job of its own.
SLOT_MARK = MAX_INT - 1  # the largest DIED.job; the master's job ids never get there
MAX_STATS = 512  # executors one HEARTBEAT may report on

Frame = Union[bytes, memoryview, Any]  # bytes or zmq.Frame


_KINDS = {k.value: k for k in Kind}  # faster than Kind(value) on the hot path
_PREFIXES = {k: MAGIC + k.value for k in Kind}  # a header frame's start (.value is a property)


def beats_apart(silence: float, heartbeat: float) -> int:
    """How many heartbeats (of ``heartbeat`` seconds, the longer of the two
    sides') apart the master and an executor that its supervisor vouches
    for (``cw.master.peers``) beat each other: three beats fall within
    ``silence``, the shorter of the two sides' heartbeat * liveness, after
    which either gives the other up (3 at the defaults). One a heartbeat,
    10,000 idle executors and their master sent each other 20,000 messages
    a second, as many as the master's whole dispatch."""
    return max(1, int(silence / (3 * heartbeat) + 1e-9))


def _bytes(frame: Frame) -> bytes:
    return frame.bytes if isinstance(frame, zmq.Frame) else bytes(frame)


# Headers are coded once per message on every hop, so the JSON codecs are
# built once: JSONEncoder.encode builds its C encoder anew at each call (most
# of the cost of a small header), and JSONDecoder.decode wraps the C scanner
# in two regular-expression matches for whitespace, which compact headers
# never hold. Without the C accelerator, the standard calls do the work.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_DECODER = json.JSONDecoder()


def _header_encoder() -> Callable[[Any], str]:
    make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
    if make is None:
        return _ENCODER.encode
    # No markers: no check for cycles, which headers built here never have
    # (one would end in RecursionError, not json's ValueError).
    chunks = make(None, _ENCODER.default, json.encoder.encode_basestring_ascii, None,
                  ":", ",", False, False, True)
    return lambda header: "".join(chunks(header, 0))


def _header_decoder() -> Callable[[str], Any]:
    make = json.scanner.c_make_scanner  # type: ignore[attr-defined]
    if make is None:
        return _DECODER.decode
    scan = make(_DECODER)

    def decode(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:  # no value where it starts (whitespace?): as json.loads would
            return _DECODER.decode(text)
        return value if end == len(text) else _DECODER.decode(text)  # trailing text: idem

    return decode


_encode = _header_encoder()
_decode = _header_decoder()


@dataclass
class Message:
    """One decoded message: its kind, its JSON header, its opaque payload."""

    kind: Kind
    header: dict = field(default_factory=dict)
    payload: tuple = ()
    # The header as its kind's record (``RECORDS``): what receivers read.
    # Set by ``from_frames``; a message built to be sent has none.
    body: Any = field(default=None, compare=False, repr=False)

    def to_frames(self) -> list:
        return [_PREFIXES[self.kind] + _encode(self.header).encode(), *self.payload]

    def to_legacy_frames(self) -> list:
        """The layout of protocols 1 to 3 (magic, kind, header: three frames),
        with our version: what a peer speaking those can read to see that
        it must upgrade."""
        return [MAGIC, self.kind.value, _encode(self.header).encode(), *self.payload]

    @classmethod
    def from_frames(cls, frames: Sequence[Frame]) -> "Message":
        """Decode and validate; any defect raises ``ProtocolError``."""
        if not frames:
            raise ProtocolError("empty message")
        first = _bytes(frames[0])
        if first[:2] != b"CW" or len(first) < 3:
            raise ProtocolError("not a cw message (bad magic)")
        if first[:3] != MAGIC:
            raise ProtocolError(
                f"protocol version {first[2]} spoken by peer, {PROTOCOL_VERSION} here"
            )
        kind = _KINDS.get(first[3:4])
        if kind is None:
            raise ProtocolError(f"unknown message kind {first[3:4]!r}")
        limit = MAX_STATUS_BYTES if kind is Kind.STATUS else MAX_HEADER_BYTES
        header = decode_header(first[4:], limit)
        payload = tuple(frames[1:])
        validate(kind, header, len(payload))
        return cls(kind, header, payload, body_of(kind, header))


def peer_version(frames: Sequence[Frame]) -> Union[int, None]:
    """The protocol version a cw peer's message says, whichever layout it
    used; None when it is no cw message at all."""
    first = _bytes(frames[0]) if frames else b""
    return first[2] if first[:2] == b"CW" and len(first) >= 3 else None


def version_mismatch(frames: Sequence[Frame], master: str, us: str) -> Union[str, None]:
    """What to tell a user whose master (at ``master``) sent ``frames`` in
    another protocol version, naming both; None when the versions agree."""
    version = peer_version(frames)
    if version is None or version == PROTOCOL_VERSION:
        return None
    return (f"the master at {master} speaks cw protocol {version}, {us} {PROTOCOL_VERSION}: "
            "install the same cw version on every machine")


def legacy_layout(frames: Sequence[Frame]) -> bool:
    """Whether a message uses protocol 1 to 3's layout (a 3-byte magic frame)."""
    version = peer_version(frames)
    return version is not None and version <= 3 and len(frames[0]) == 3


def decode_header(raw: bytes, limit: int = MAX_HEADER_BYTES) -> dict:
    if len(raw) > limit:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {limit}")
    try:
        header = _decode(raw.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # deep nesting: RecursionError
        raise ProtocolError(f"header is not JSON: {str(e)[:200]}") from e
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return header


MAX_BATCH = 10_000  # jobs in one SUBMIT or TASK


def validate(kind: Kind, header: dict, npayload: int) -> None:
    """Check a header against its kind's schema (types, ranges, sizes)."""
    if kind in FREE_FORM:
        return
    for name, typ, required, limit in _FIELDS[kind]:
        value = header.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise ProtocolError(f"{kind.name} header lacks {name!r}")
        elif not _plainly_valid(name, value, typ, limit):
            _check_value(kind, name, value, typ)  # says what is wrong, if anything
    if kind in (Kind.RESULT, Kind.RESULTS):
        header["results"] = _check_results(kind, header["results"], npayload)
    elif kind in (Kind.SUBMIT, Kind.TASK):
        _check_jobs(kind, header, npayload)
    elif kind is Kind.BLOB:
        if npayload != (0 if header.get("missing") else 1):
            raise ProtocolError(f"BLOB carries {npayload} payload frames, expected "
                                f"{0 if header.get('missing') else 1}")
        if not header.get("missing") and "total" not in header:
            raise ProtocolError("BLOB lacks 'total'")
    elif npayload:
        raise ProtocolError(f"{kind.name} carries {npayload} payload frames, expected none")


_MISSING = object()
_FIELDS = {kind: [(name, typ, required, LIMITS.get(name, MAX_INT - 1))
                  for name, (typ, required) in schema.items()] for kind, schema in SCHEMAS.items()}


def _plainly_valid(name: str, value: Any, typ: type, limit: int) -> bool:
    """The common case, checked fast: decoded JSON has exact types (a bool
    is no int here). False sends the value to ``_check_value``."""
    if name == "results":
        return type(value) is list  # its entries: _check_results
    if typ is int:
        return type(value) is int and 0 <= value <= limit
    if typ is list:
        return type(value) is list and (not value or (
            len(value) <= 1_000_000 and set(map(type, value)) == {int}
            and min(value) >= 0 and max(value) < MAX_INT))
    if typ is str:
        return type(value) is str and len(value) <= MAX_STRING
    if typ is float:
        return (type(value) is float or type(value) is int) and 0 <= value < 1e9
    return False


def job_runs(body: Union[Submit, Task], payload: Sequence[Frame]) -> Iterator[tuple[Frame, list]]:
    """The jobs of a received SUBMIT or TASK: ``(context, [(id, frames), ...])``
    for each run of jobs that share a context (the client's cwd and sys.path).

    The payload holds each run's context frame, then its jobs' frames; the
    header's ``contexts`` counts the jobs of each run (default: one run),
    its ``frames`` the frames of each job (default: 1, its call)."""
    ids = body.ids
    counts = body.frames or [1] * len(ids)
    i = k = 0
    for run in body.contexts or [len(ids)]:
        context, k = payload[k], k + 1
        jobs = []
        for _ in range(run):
            jobs.append((ids[i], payload[k:k + counts[i]]))
            k += counts[i]
            i += 1
        yield context, jobs


def _check_jobs(kind: Kind, header: dict, npayload: int) -> None:
    """Each run's context frame, then its jobs' frames (see ``job_runs``)."""
    n = len(header["ids"])
    if not 1 <= n <= MAX_BATCH:
        raise ProtocolError(f"{kind.name} carries {n} jobs, expected 1 to {MAX_BATCH}")
    frames = header.get("frames")
    if frames is None:
        expected = n
    elif len(frames) != n or not 1 <= min(frames) <= max(frames) <= MAX_JOB_FRAMES:
        raise ProtocolError(f"{kind.name}.frames must give {n} counts of 1 to {MAX_JOB_FRAMES}")
    else:
        expected = sum(frames)
    runs = header.get("contexts")
    if runs is None:
        expected += 1
    elif not runs or min(runs) < 1 or sum(runs) != n:
        raise ProtocolError(f"{kind.name}.contexts must give runs of at least 1 job, {n} in all")
    else:
        expected += len(runs)
    if npayload != expected:
        raise ProtocolError(f"{kind.name} of {n} jobs carries {npayload} payload frames, expected {expected}")


def _check_results(kind: Kind, results: Any, npayload: int) -> list[Result]:
    """[[id, status, error or null, number of payload frames(, seconds it ran or
    null(, the worker that ran it, or null))], ...], decoded into ``Result``s."""
    if not isinstance(results, list) or len(results) > MAX_BATCH:
        raise ProtocolError(f"{kind.name} header lacks its list of results")
    frames = 0
    for entry in results:
        if not (isinstance(entry, list) and 4 <= len(entry) <= 6 and type(entry[0]) is int
                and 0 <= entry[0] < MAX_INT and entry[1] in STATUSES
                and (entry[2] is None or (isinstance(entry[2], str) and len(entry[2]) <= MAX_STRING))
                and type(entry[3]) is int and 0 <= entry[3] <= MAX_JOB_FRAMES
                and (len(entry) == 4 or entry[4] is None or _seconds(entry[4]))
                and (len(entry) < 6 or entry[5] is None or (  # an executor does not name itself
                    kind is Kind.RESULTS and isinstance(entry[5], str) and len(entry[5]) <= MAX_STRING))):
            raise ProtocolError(f"malformed {kind.name} entry")
        frames += entry[3]
    if frames != npayload:
        raise ProtocolError(f"{kind.name} announces {frames} payload frames, carries {npayload}")
    return [Result(*entry) for entry in results]


def _seconds(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value < 1e9


def _check_value(kind: Kind, name: str, value: Any, typ: type) -> None:
    where = f"{kind.name}.{name}"
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif typ is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, typ) and not isinstance(value, bool)
    if not ok:
        raise ProtocolError(f"{where} must be {typ.__name__}, got {type(value).__name__}")
    if typ is int and not 0 <= value <= LIMITS.get(name, MAX_INT - 1):
        raise ProtocolError(f"{where} out of range")
    if typ is float and not 0 <= value < 1e9:
        raise ProtocolError(f"{where} out of range")
    if typ is str and len(value) > MAX_STRING:
        raise ProtocolError(f"{where} longer than {MAX_STRING} characters")
    if typ is list and name != "results":
        if len(value) > 1_000_000 or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_INT for i in value
        ):
            raise ProtocolError(f"{where} must be a list of job ids or counts")


def versions() -> dict:
    """The version fields every HELLO/READY/WELCOME carries. Worked out
    once: the master's first call is at its start (``Master.__init__``),
    since an import later, at a file-descriptor limit another user's idle
    connections filled (``cw.master.guard``), could not open its files."""
    global _VERSIONS
    if _VERSIONS is None:
        import platform

        import cloudpickle

        _VERSIONS = {"v": PROTOCOL_VERSION, "python": platform.python_version(),
                     "cloudpickle": cloudpickle.__version__}
    return dict(_VERSIONS)


_VERSIONS: Optional[dict] = None


def salvage_ids(frames: list) -> tuple[Optional[Kind], list[int]]:
    """A broken SUBMIT's or RESULT's kind and the job ids in it (``ids``,
    ``results``) that can be read, to fail those jobs rather than leave
    them hanging; (None, []) for any other message."""
    try:
        first = bytes(frames[0])
        kind = Kind(first[3:4])  # no kind at all: ValueError
        if kind not in (Kind.SUBMIT, Kind.RESULT):
            return None, []
        header = json.loads(first[4:])
        ids = header.get("ids") or [e[0] for e in header["results"][:10_000] if isinstance(e, list) and e]
    except Exception:
        return None, []
    if not isinstance(ids, list):
        return None, []
    return kind, [i for i in ids[:10_000]
                  if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_INT]
