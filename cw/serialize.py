"""What travels in payload frames: jobs, results and remote errors.

A job's frames are its call, ``pickle((function bytes, args, kwargs))``, then
the out-of-band buffers of its arguments (pickle protocol 5: a big numpy
array, or any object that offers its buffer, travels as its own ZeroMQ frame, never copied into the pickle
and never joined by the master). The function is cloudpickled once and kept:
a sweep of a million calls of one function pickles it once on the client and
unpickles it once per executor. A SUBMIT adds one JSON *context* frame (the
client's cwd and sys.path, which the worker must install before it unpickles
anything, because functions from importable modules are pickled by
reference). A result is its pickle and its buffers the same way; a failed
job's is the pickled pair ``(pickled exception or None, traceback text)`` so
the text survives an exception the client cannot unpickle.
"""
from __future__ import annotations

import json
import mmap
import operator
import os
import pickle
import sys
import time
import types
from collections import OrderedDict
from typing import Any, Callable, Optional

from . import blobs, shm
from .errors import UnpicklableError
from .pickling import PROTOCOL, cloudpickle_dumps, pack, unpack

OUT_OF_BAND = 64 * 1024  # buffers from this size travel as frames of their own
MAX_BUFFERS = 1000  # beyond this many, buffers go inside the pickle (frame limit)


def context_frame(cwd: str | None = None, path: list[str] | None = None,
                  extra: Optional[dict] = None) -> bytes:
    """A SUBMIT's context: the client's cwd and sys.path, and its host key and
    pid, so that an executor on its host returns big buffers in shared memory
    (``extra``: where its direct path listens, see ``cw.direct``)."""
    ctx: dict = {"cwd": os.getcwd() if cwd is None else cwd,
                 "path": list(sys.path if path is None else path)}
    if shm.host_key() is not None:
        ctx["shm"], ctx["pid"] = shm.host_key(), os.getpid()
    ctx.update(extra or {})
    return json.dumps(ctx).encode()


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


_pickled_functions = _LRU(64)  # id(func) -> [identity, global names, bytes, digest or None]


def _identity(func: types.FunctionType, names: tuple) -> tuple:
    """What a by-value pickle of ``func`` depends on: the objects themselves
    (``names``: the globals its code names, see ``_global_names``).

    A cached pickle is reused only while all of these are the same objects
    (``_same``): rebinding a global the function (or a function nested in
    it) names, or changing its code, defaults or closure, pickles it afresh.
    Held, not their ids, which a new object may reuse once an old one is
    freed. A global mutated in place is not seen: pass data that changes as
    arguments.
    """
    glob = func.__globals__
    cells = tuple(c.cell_contents if _full(c) else _full for c in func.__closure__ or ())
    return (func, func.__code__, func.__defaults__, func.__kwdefaults__,
            *map(glob.get, names), *cells)


def _same(a: tuple, b: tuple) -> bool:
    """Element by element identity (``==`` might call an array's ``__eq__``)."""
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _global_names(code: types.CodeType) -> tuple:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names += _global_names(const)
    return tuple(names)


def _full(cell: Any) -> bool:
    try:
        return cell.cell_contents is not _full  # always True; raises for an empty cell
    except ValueError:  # an empty cell (a variable not yet assigned)
        return False


def dumps_function(func: Callable) -> bytes:
    return _pickled_function(func)[2]


def _pickled_function(func: Callable) -> list:
    """``[identity, global names, pickle, digest or None]``: cached for a
    plain function, fresh for any other callable. The digest is filled in
    once the pickle turns out big enough to travel as a blob (``_digest``)."""
    if not isinstance(func, types.FunctionType):
        return [None, (), pack(func), None]
    hit = _pickled_functions.get(id(func))
    # The names a code holds are fixed: kept with the pickle, not walked
    # again per call (a new code fails the identity check all the same).
    if hit is not None and _same(_identity(func, hit[1]), hit[0]):
        return hit
    names = _global_names(func.__code__)
    entry = [_identity(func, names), names, pack(func), None]
    _pickled_functions.put(id(func), entry)
    return entry


def _digest(entry: list) -> bytes:
    """A pickled function's SHA-256, hashed once per cached pickle."""
    if entry[3] is None:
        entry[3] = blobs.digest(entry[2])
    return entry[3]


def _dumps(obj: Any, owner: Optional[int] = None, args: bool = False) -> list:
    """``[pickle, *buffers]``: plain pickle (fast, in C) when it can, else cloudpickle.

    Plain pickle refers to classes and functions by name; one defined where
    the other side cannot import it (``__main__``, a closure) makes it fail,
    and cloudpickle then sends it by value. With an ``owner`` pid, buffers
    of ``shm.SHARE_FROM`` bytes or more go to shared-memory files it removes.
    A call's arguments (``args``): a big buffer that takes no shared memory
    goes as a blob reference (``blobs.buffer_frame``), held once by the client.
    """
    buffers: list = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < OUT_OF_BAND or len(buffers) >= MAX_BUFFERS:
            return True  # in-band
        ref = blobs.buffer_frame(raw, shared_memory=bool(owner)) if args else None
        if ref is not None:
            buffers.append(ref)
        else:
            buffers.append(shm.export(raw, owner) if owner and raw.nbytes >= shm.SHARE_FROM else raw)
        return False

    try:
        data = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=out_of_band)
        if b"__main__" not in data:  # else a by-name reference the other side resolves wrongly
            return [data, *buffers]
    except Exception:
        pass
    _drop(buffers)
    try:
        return [cloudpickle_dumps(obj, out_of_band), *buffers]
    except BaseException:
        _drop(buffers)
        raise


def _drop(buffers: list) -> None:
    """Undo what a failed pickling made: its shared-memory files, its holds on blobs."""
    shm.release(buffers)
    blobs.store.let_go((b"", b"", *buffers))
    buffers.clear()


def _loads(data: Any, buffers: Any) -> Any:
    # Buffers are writable: a job may change its arrays in place, as it could
    # under ProcessPoolExecutor. A frame is copied; a shared-memory file is
    # mapped copy-on-write, so the file stays as it was.
    return pickle.loads(data, buffers=[shm.attach(b) if shm.is_ref(b) else _blob_buffer(b)
                                       for b in buffers])


class Pages:
    """A fetched argument blob in memory of its own (a memfd): each job maps
    it copy-on-write, so it gets a writable buffer without a copy of 50 MB."""

    def __init__(self, data: Any = None, fd: Optional[int] = None) -> None:
        if fd is not None:  # a file of its own already (the host's copy, cw.worker.hostcache)
            self.fd, self.size = fd, os.fstat(fd).st_size
            return
        self.size = len(data)
        self.fd = os.memfd_create("cw-blob", os.MFD_CLOEXEC)
        with open(self.fd, "wb", closefd=False) as f:
            f.write(data)

    def __len__(self) -> int:
        return self.size

    def map(self) -> Any:
        if self.size == 0:
            return bytearray()
        return mmap.mmap(self.fd, self.size, access=mmap.ACCESS_COPY)

    def __del__(self) -> None:  # a job's mapping keeps its pages
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass


def keep_fetched(key: bytes, data: Any, fd: Optional[int] = None) -> None:
    """Cache an argument blob an executor fetched (in a memfd where it can),
    or the file ``fd`` that holds it (the host's copy: this takes the fd)."""
    try:
        kept: Any = Pages(data, fd)
    except (OSError, AttributeError):  # no memfd here: a plain copy per job, then
        kept = bytes(data)
    fetched.put(key, kept, len(kept), time.monotonic())


def _blob_buffer(frame: Any) -> Any:
    """A writable copy of a buffer frame, or of the fetched blob it refers to."""
    if type(frame) is mmap.mmap:  # already the job's own: a buffer pushed to a client (cw.direct)
        return frame
    key = blobs.reference(frame) if len(frame) == blobs.REF_BYTES else None
    if key is None:
        return bytearray(frame)
    data = fetched.get(key, time.monotonic())
    if data is None:
        if key in objects.entries:  # a share()d object already unpickled: its bytes are not needed
            return bytearray()
        raise BlobMissing(key.hex())
    if isinstance(data, Pages):
        return data.map()
    return bytearray(data)


def dumps_call(func: Callable, args: tuple, kwargs: dict, jobid: object = None,
               shared: bool = False, label: Any = None) -> list:
    """A call's frames: [function length (4 bytes), function, arguments' pickle]
    and the arguments' out-of-band buffers (``shared``: big ones in shared
    memory, see ``cw.shm``; ``label``: a short str or int the job's prints
    are tagged with). On failure, name the culprit."""
    try:
        pickled = _pickled_function(func)
        func_data = pickled[2]
        call = (args, kwargs) if label is None else (args, kwargs, label)
        frames = _dumps(call, os.getpid() if shared else None, args=True)
    except Exception as e:  # cloudpickle raises many types here
        culprit = _find_culprit(func, args, kwargs)
        what = f" of job {jobid!r}" if jobid is not None else ""
        raise UnpicklableError(
            f"cannot send {culprit}{what} to a worker: {type(e).__name__}: {e}"
        ) from e
    if len(func_data) >= blobs.threshold():  # by reference: see cw.blobs
        key = _digest(pickled)
        blobs.store.add(key, func_data)  # the job's claim, let go when it is over
        if shared:  # this host's executors map it, not fetch it
            blobs.store.place(key)
        frames[0] = blobs.REF + key + frames[0]
    else:
        frames[0] = len(func_data).to_bytes(4, "little") + func_data + frames[0]
    return frames



def _find_culprit(func: Callable, args: tuple, kwargs: dict) -> str:
    candidates = [("function", func)]
    candidates += [(f"argument {i}", a) for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, obj in candidates:
        try:
            cloudpickle_dumps(obj)
        except Exception:
            return f"{label} {_short_repr(obj)}"
    return "the call"


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


class FunctionCache:
    """An executor's unpickled functions, by their pickle (or a blob's
    digest): bounded in bytes of pickle, least recently used first out, and
    a function no job used for ``idle`` seconds goes (its client has most
    likely left; a later job fetches or carries it again)."""

    def __init__(self, max_bytes: int, idle: float) -> None:
        self.max_bytes, self.idle = max_bytes, idle
        self.entries: OrderedDict = OrderedDict()  # key -> (function, size, last used)
        self.size = 0

    def get(self, key: Any, now: float) -> Any:
        hit = self.entries.get(key)
        if hit is None:
            return None
        if now - hit[2] >= 1.0:  # the order and the idle clock move by the second: cheap per job
            self.entries[key] = (hit[0], hit[1], now)
            self.entries.move_to_end(key)
        return hit[0]

    def put(self, key: Any, func: Any, size: int, now: float) -> None:
        self.entries[key] = (func, size, now)
        self.size += size
        while self.size > self.max_bytes and len(self.entries) > 1:
            self._drop_oldest()

    def discard(self, key: Any) -> None:
        hit = self.entries.pop(key, None)
        if hit is not None:
            self.size -= hit[1]

    def tidy(self, now: float) -> None:
        """Drop what no job used for ``idle`` seconds."""
        while self.entries and now - next(iter(self.entries.values()))[2] >= self.idle:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (_, size, _) = self.entries.popitem(last=False)
        self.size -= size


def _cache_bytes() -> int:
    try:
        return max(1, int(os.environ.get("CW_FUNCTION_CACHE_BYTES", "") or 512 << 20))
    except ValueError:
        return 512 << 20


functions = FunctionCache(_cache_bytes(), idle=60.0)  # an executor's (CW_FUNCTION_CACHE_BYTES)
# Blobs it fetched: an argument's (kept in a memfd, ``Pages``) or a function's
# pickle (until its first job unpickles it).
fetched = FunctionCache(_cache_bytes(), idle=60.0)
objects = FunctionCache(_cache_bytes(), idle=60.0)  # share()d objects, unpickled: digest -> object


def has_blob(key: bytes) -> bool:
    return key in functions.entries or key in fetched.entries or key in objects.entries


def tidy_caches(now: float) -> None:
    """Drop the functions and fetched blobs no job used for a while."""
    functions.tidy(now)
    fetched.tidy(now)
    objects.tidy(now)


class BlobMissing(Exception):
    """A job refers to a blob this executor has not fetched (cw.blobs)."""


def loads_call(frames: Any) -> tuple[Callable, tuple, dict]:
    """Rebuild a call; its function is unpickled once and then reused."""
    return loads_labelled_call(frames)[:3]


def loads_labelled_call(frames: Any) -> tuple[Callable, tuple, dict, Any]:
    """``loads_call``, and the label the client gave the job (or None): what
    its prints are tagged with in the worker's log."""
    raw = memoryview(frames[0])
    by_reference = raw[:4] == blobs.REF
    if by_reference:
        end = 4 + blobs.DIGEST_BYTES
        key: Any = bytes(raw[4:end])
    else:
        end = 4 + int.from_bytes(raw[:4], "little")
        key = bytes(raw[4:end])
    now = time.monotonic()
    func = functions.get(key, now)
    if func is None:
        pickled = fetched.get(key, now) if by_reference else key
        if pickled is None:
            raise BlobMissing(key.hex())
        fetched.discard(key)  # the function is what is kept (its big buffers: views of the blob)
        func = unpack(pickled)
        functions.put(key, func, len(pickled), now)
    args, kwargs, *label = _loads(raw[end:], frames[1:])
    return func, args, kwargs, label[0] if label else None


def dumps_value(value: Any, owner: Optional[int] = None) -> list:
    """A job's result as frames: its pickle and its out-of-band buffers (big
    ones in shared-memory files that the client ``owner`` removes)."""
    return _dumps(value, owner)


def loads_value(frames: Any) -> Any:
    """Rebuild a result (mapping the shared-memory files it names)."""
    return _loads(frames[0], frames[1:])
