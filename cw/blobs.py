"""Blobs: a big function pickle travels once per executor, not once per job.

A sweep's function often closes over a table, a model or a mesh of tens of
MB; ``executor.map(simulate, params)`` would otherwise carry that pickle in
every job, keep a copy per job in the client until its result came, and
push each copy through the master. A function pickle of ``threshold()``
bytes or more (1 MiB; ``CW_BLOB_THRESHOLD``) is named by its SHA-256
instead, and a job carries that reference::

    call frame:  [length (4 bytes)][function pickle][pickle of (args, kwargs)]
    by reference: [REF (4 bytes)][digest (32 bytes)][pickle of (args, kwargs)]

    executor ─FETCH{id: task, blob, offset}──► master ─FETCH{blob, executor, offset}──► client
    executor ◄─BLOB{blob, offset, total} [chunk]── master ◄─BLOB{..., executor} [chunk]─ client

A blob moves in chunks of ``CHUNK`` bytes, the executor asking for the next
when one arrives: the master holds one chunk per fetching executor at most.

The client (``Store``) keeps one copy of each blob for as long as a job of
its own that refers to it is unfinished: a master restart or a requeue
fetches it again. An executor fetches a blob it lacks before it runs the job
(``cw.worker.fetch``), checks the digest, and keeps the function in its
cache (``cw.serialize``, bounded in bytes). A blob the client no longer holds
fails the job with a clear error; no answer within ``FETCH_SECONDS`` too.
A client that may share memory with its executors, and has some on its
host, also writes its copy into the host's cache (``Store.place``), where
they find it and fetch nothing (``cw.worker.hostcache``).
The master only routes: it holds no blob and counts what it routed
(``blobs_routed``, ``blob_bytes`` in ``cw status --json``).
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import mmap
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from . import lanes, shm, shmdir

log = logging.getLogger(__name__)

REF = b"\xff\xff\xff\xff"  # no function pickle is 4 GiB long: this length means "by reference"
DIGEST_BYTES = 32
REF_BYTES = 4 + DIGEST_BYTES  # a buffer frame of this size starting with REF is a reference
SHARED = b"\xff\xff\xff\xfe"  # the same, for a ``share()``d object's pickle (cw.share)
THRESHOLD = 1 << 20
CHUNK = 4 << 20  # a blob moves in chunks, a few asked for ahead
WINDOW = 4  # chunks asked for ahead: the master holds this many of one executor's at most
MAX_BLOB = 1 << 40  # a size no blob has: a peer that says more is wrong
FETCH_SECONDS = 120.0  # an executor waits this long for a blob, then fails the job


def _threshold_from_env() -> int:
    raw = os.environ.get("CW_BLOB_THRESHOLD", "").strip()
    try:
        return max(1, int(raw)) if raw else THRESHOLD
    except ValueError:
        return THRESHOLD


_threshold = _threshold_from_env()  # read once: threshold() runs for every job


def threshold() -> int:
    """Function pickles (and buffers) of this many bytes or more travel as
    blobs: ``CW_BLOB_THRESHOLD`` as the process started, default 1 MiB."""
    return _threshold


def zeroed(size: int) -> Any:
    """Writable memory for a blob that arrives in chunks: an anonymous
    mapping, its pages made at once (MAP_POPULATE: half the cost of
    faulting them in one by one as chunks land)."""
    if not size:
        return bytearray()
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def copy(data: Any) -> Any:
    """A copy of a buffer: a big one in memory whose pages are made at once
    (``zeroed``), a third faster than ``bytes()`` faulting them in."""
    with memoryview(data) as view:
        if view.nbytes < TREE_BYTES:
            return bytes(view)
        out = zeroed(view.nbytes)
        out[:] = view.cast("B")
        return out


def landing(size: int, fd: Optional[int] = None) -> tuple[Any, Optional[int]]:
    """Memory for a blob that arrives in chunks, backed by a file: ``fd``
    (the host's copy being made, cw.worker.hostcache) or a memfd of its own,
    so that it is kept, and mapped by each job, with no second copy. (The
    memory, the file's descriptor); (anonymous memory, None) where no file
    can be had."""
    own = fd is None
    try:
        if own:
            fd = os.memfd_create("cw-blob", os.MFD_CLOEXEC)
        os.ftruncate(fd, size)  # type: ignore[arg-type]
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE), fd  # type: ignore[arg-type]
    except (OSError, AttributeError, ValueError):  # no memfd, no room, size 0
        if own and fd is not None:
            os.close(fd)
        return zeroed(size), None


TREE_BYTES = 16 << 20  # a blob this big is hashed in pieces, on several cores at once
_PIECE = 4 << 20


def digest(data: Any) -> bytes:
    """A blob's name: SHA-256 of its bytes; of a big one, BLAKE2b (32 bytes,
    personalised "cw-tree") of its size and of the SHA-256 of each 4 MiB
    piece: a hash tree of one level, the pieces hashed on up to four cores
    (hashlib lets go of the GIL): a 64 MiB argument costs its client half
    the wait or less."""
    size = memoryview(data).nbytes
    if size < TREE_BYTES:
        return hashlib.sha256(data).digest()
    with memoryview(data) as whole:
        sums = _piece_sums(whole.cast("B"))
    # The root in another hash (BLAKE2b, personalised): no small blob's SHA-256 can name a big one.
    return hashlib.blake2b(size.to_bytes(8, "big") + b"".join(sums), digest_size=32,
                           person=b"cw-tree").digest()


def _piece_sums(view: memoryview) -> list:
    pieces = [view[i:i + _PIECE] for i in range(0, view.nbytes, _PIECE)]
    sums: list = [b""] * len(pieces)
    lanes = max(1, min(4, os.cpu_count() or 1, len(pieces)))

    def work(lane: int) -> None:
        for i in range(lane, len(pieces), lanes):
            sums[i] = hashlib.sha256(pieces[i]).digest()

    threads = [threading.Thread(target=work, args=(lane,), daemon=True) for lane in range(1, lanes)]
    for thread in threads:
        thread.start()
    work(0)
    for thread in threads:
        thread.join()
    for piece in pieces:
        piece.release()
    view.release()
    return sums


def reference(call: Any) -> Optional[bytes]:
    """The digest a call frame refers to, or None if it carries its function."""
    view = memoryview(call)
    if view[:4] == REF or len(view) == REF_BYTES and view[:4] == SHARED:
        return bytes(view[4:4 + DIGEST_BYTES])
    return None


def needs(frames: Any) -> list[tuple[bytes, bool]]:
    """The blobs a job's ``(call, *buffers)`` frames refer to: ``(digest, is its function)``."""
    found = []
    first = frames[0]
    head = first[:4] if type(first) is bytes else bytes(memoryview(first)[:4])
    if head == REF:  # a call frame is never a share()d object's
        found.append((bytes(memoryview(first)[4:4 + DIGEST_BYTES]), True))
    for frame in frames[1:]:
        if len(frame) == REF_BYTES:
            key = reference(frame)
            if key is not None:
                found.append((key, False))
    return found


_shared: dict[int, tuple[bytes, bytes]] = {}  # id(pickle) -> (the pickle, its digest): cw.share


def register_shared(data: bytes, key: bytes) -> None:
    _shared[id(data)] = (data, key)


def unregister_shared(data_id: int) -> None:
    _shared.pop(data_id, None)


def buffer_frame(raw: memoryview, shared_memory: bool) -> Optional[bytes]:
    """A reference frame for a ``share()``d object's pickle, or for a big
    argument buffer of a client that shares no memory with its executors
    (``shared_memory`` False: on one host, buffers take ``cw.shm`` instead);
    else None. The buffer is hashed (about 30 ms per 50 MB) and held once
    however many jobs carry it; the master then sees it in chunks, once per
    executor, never whole and never per job."""
    owner = raw.obj
    shared = _shared.get(id(owner))
    if shared is not None and shared[0] is owner:  # a share()d object's pickle: hashed once
        store.add(shared[1], owner)
        if shared_memory:
            store.place(shared[1])
        return SHARED + shared[1]
    if shared_memory or raw.nbytes < threshold():
        return None
    key = digest(raw)
    store.add(key, raw)
    return REF + key


def host_directory() -> Optional[Path]:
    """Where this host's copies of blobs are (``cw.worker.hostcache``): in
    this user's private directory (made 0700); None where that is not safe
    or not wanted (``CW_SHM=0``)."""
    if shm.host_key() is None:
        return None
    where, why = shmdir.subdirectory("blobs")
    if where is None:
        log.warning("no host blob cache: %s", why)
    return where


def copy_paths(where: Path, key: bytes) -> tuple[Path, Path]:
    """A host copy's names in ``where``: while one process writes it
    (``<digest>.part``, made with ``O_EXCL``: one writer), and once this
    process keeps it (``<digest>-<pid namespace>-<pid>``)."""
    return where / f"{key.hex()}.part", where / f"{key.hex()}-{shm.pid_namespace()}-{os.getpid()}"


def place_copy(key: bytes, data: Any) -> Optional[Path]:
    """A client's own copy of its blob for the executors of its host, which
    then need not fetch it: written as an executor writes one it fetched
    (``.part``, then renamed after this process, which removes it). Its
    path; None where there is no host cache, a copy is there or on its way
    already, or no room."""
    where = host_directory()
    if where is None:
        return None
    prefix = key.hex()
    with os.scandir(where) as entries:
        if any(e.name.startswith(prefix) for e in entries):
            return None
    part, final = copy_paths(where, key)
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        write_all(fd, data)
        os.rename(part, final)
        return final
    except OSError as e:
        log.info("cannot put blob %s in this host's cache: %s", prefix, e)
        part.unlink(missing_ok=True)
        return None
    finally:
        os.close(fd)


def executors_here() -> bool:
    """Whether an executor of this ``CW_HOME`` runs on this host (its lane
    socket, ``cw.lanes``): only for them does a client put its blobs in the
    host's cache; a client on a login node would fill its ``/dev/shm`` for
    none. (Executors whose lanes are off fetch instead.)"""
    where, _ = lanes.directory() if shm.host_key() is not None else (None, "")
    try:
        return where is not None and lanes.any_alive(where, shm.pid_namespace())
    except OSError:
        return False


def write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
    finally:
        view.release()


class Store:
    """A client process's blobs: one copy each, kept while a job needs it.

    ``add`` counts a job that refers to a blob (from ``dumps_call``, in the
    user's thread); ``let_go`` uncounts it when the job is over (from the
    I/O thread). A blob no job needs any more stays ``RECENT_SECONDS`` among
    the recent (``RECENT_BYTES`` in all), so a sweep whose jobs end as fast
    as they are submitted does not copy its array again for each.
    """

    RECENT_SECONDS = 30.0
    RECENT_BYTES = 256 << 20

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blobs: dict[bytes, list] = {}  # digest -> [bytes, jobs that need it]
        self.recent: OrderedDict = OrderedDict()  # digest -> (bytes, when let go)
        self.recent_bytes = 0
        self.placed: dict[bytes, Any] = {}  # digest -> this host's copy we wrote (or None: tried)
        self.none_here_until = 0.0  # no executor on this host: looked again after this

    def place(self, key: bytes) -> None:
        """Put a held blob in this host's cache, where the executors of this
        host look before they fetch (``place_copy``), once, if any runs here.
        It goes when this process's clients close or it exits; the executors
        of the host remove it once none has opened it for a minute
        (``cw.worker.hostcache``)."""
        with self.lock:
            entry = self.blobs.get(key)
            if entry is None or key in self.placed or time.monotonic() < self.none_here_until:
                return
            if not executors_here():
                self.none_here_until = time.monotonic() + 1.0
                return
            self.placed[key] = None
        path = place_copy(key, entry[0])
        with self.lock:
            self.placed[key] = path  # kept until close, whether jobs still need it or not

    def _unplace(self, key: bytes) -> None:
        path = self.placed.pop(key, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        """A client closes, or this process exits: the host's copies it wrote
        go (executors keep what they mapped; any other fetches)."""
        with self.lock:
            for key in list(self.placed):
                self._unplace(key)

    def forked(self) -> None:
        """In a forked child: the copies are the parent's to remove."""
        self.lock = threading.Lock()
        self.placed = {}

    def add(self, key: bytes, data: Any) -> None:
        with self.lock:
            entry = self.blobs.get(key)
            if entry is None:
                kept = self.recent.pop(key, None)
                if kept is not None:
                    self.recent_bytes -= len(kept[0])
                    data = kept[0]
                elif not isinstance(data, bytes):
                    data = copy(data)  # the job's data as it was when submitted
                entry = self.blobs[key] = [data, 0]
            entry[1] += 1

    def let_go(self, payload: tuple) -> None:
        """A job is over: its frames (context, call, buffers) need their blobs no more."""
        if len(payload) < 3 and (len(payload) < 2 or type(payload[1]) is bytes
                                 and not payload[1].startswith(REF)):
            return  # the usual job: its function inline, no buffer
        keys = [key for key, _ in needs(payload[1:])]
        if not keys:
            return
        with self.lock:
            for key in keys:
                entry = self.blobs.get(key)
                if entry is not None:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self.blobs[key]
                        self._keep_recent(key, entry[0])

    def _keep_recent(self, key: bytes, data: bytes) -> None:
        now = time.monotonic()
        self.recent[key] = (data, now)
        self.recent_bytes += len(data)
        while self.recent and (self.recent_bytes > self.RECENT_BYTES
                               or now - next(iter(self.recent.values()))[1] > self.RECENT_SECONDS):
            _, (old, _) = self.recent.popitem(last=False)
            self.recent_bytes -= len(old)

    def get(self, key: bytes) -> Optional[bytes]:
        with self.lock:
            entry = self.blobs.get(key)
            return None if entry is None else entry[0]

    def __len__(self) -> int:
        return len(self.blobs)


store = Store()  # this process's, shared by its clients


def _exiting() -> None:
    store.close()


def _forked() -> None:
    store.forked()


atexit.register(_exiting)
os.register_at_fork(after_in_child=_forked)


def answer(fetch: Any, limit: int = 1 << 62) -> Any:
    """A client's BLOB for the master's FETCH: a chunk of the bytes, or that
    they are gone (``limit``: the master's --max-message-size)."""
    from .protocol import Kind, Message

    data = store.get(bytes.fromhex(fetch.blob)) if len(fetch.blob) == 2 * DIGEST_BYTES else None
    to = {} if fetch.executor is None else {"executor": fetch.executor}  # none on the direct path
    if data is None or fetch.offset > len(data):
        return Message(Kind.BLOB, {"blob": fetch.blob, **to, "missing": True})
    size = max(64 << 10, min(CHUNK, limit // 2))
    chunk = memoryview(data)[fetch.offset:fetch.offset + size]
    return Message(Kind.BLOB, {"blob": fetch.blob, **to, "offset": fetch.offset, "total": len(data)},
                   (chunk,))
