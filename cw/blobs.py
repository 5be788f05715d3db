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
The master only routes: it holds no blob and counts what it routed
(``blobs_routed``, ``blob_bytes`` in ``cw status --json``).
"""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Optional

REF = b"\xff\xff\xff\xff"  # no function pickle is 4 GiB long: this length means "by reference"
DIGEST_BYTES = 32
THRESHOLD = 1 << 20
CHUNK = 4 << 20  # a blob moves in chunks, each asked for in turn: the master holds one at most
FETCH_SECONDS = 120.0  # an executor waits this long for a blob, then fails the job


def threshold() -> int:
    """Function pickles of this many bytes or more travel as blobs."""
    raw = os.environ.get("CW_BLOB_THRESHOLD", "")
    try:
        return max(1, int(raw)) if raw.strip() else THRESHOLD
    except ValueError:
        return THRESHOLD


def digest(data: Any) -> bytes:
    return hashlib.sha256(data).digest()


def reference(call: Any) -> Optional[bytes]:
    """The digest a call frame refers to, or None if it carries its function."""
    view = memoryview(call)
    if view[:4] == REF:
        return bytes(view[4:4 + DIGEST_BYTES])
    return None


class Store:
    """A client process's blobs: one copy each, kept while a job needs it.

    ``add`` counts a job that refers to a blob (from ``dumps_call``, in the
    user's thread); ``let_go`` uncounts it when the job is over (from the
    I/O thread); the last one frees the bytes.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blobs: dict[bytes, list] = {}  # digest -> [bytes, jobs that need it]

    def add(self, key: bytes, data: bytes) -> None:
        with self.lock:
            entry = self.blobs.setdefault(key, [data, 0])
            entry[1] += 1

    def let_go(self, payload: tuple) -> None:
        """A job is over: its call frame (``payload[1]``) needs its blob no more."""
        if len(payload) < 2:
            return
        key = reference(payload[1])
        if key is None:
            return
        with self.lock:
            entry = self.blobs.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self.blobs[key]

    def get(self, key: bytes) -> Optional[bytes]:
        with self.lock:
            entry = self.blobs.get(key)
            return None if entry is None else entry[0]

    def __len__(self) -> int:
        return len(self.blobs)


store = Store()  # this process's, shared by its clients


def answer(fetch: Any) -> Any:
    """A client's BLOB for the master's FETCH: the bytes, or that they are gone."""
    from .protocol import Kind, Message

    data = store.get(bytes.fromhex(fetch.blob)) if len(fetch.blob) == 2 * DIGEST_BYTES else None
    if data is None or fetch.offset > len(data):
        return Message(Kind.BLOB, {"blob": fetch.blob, "executor": fetch.executor, "missing": True})
    chunk = memoryview(data)[fetch.offset:fetch.offset + CHUNK]
    return Message(Kind.BLOB, {"blob": fetch.blob, "executor": fetch.executor, "offset": fetch.offset,
                               "total": len(data)}, (chunk,))
