"""``executor.share(obj)``: data a user places once, for many jobs.

::

    table = ex.share(load_table())            # pickled and hashed once, here
    ex.map(simulate, params, [table] * n)     # each job receives the table itself

The handle is small; a job that takes it as an argument (at any depth)
receives the object. It travels as a blob (``cw.blobs``): the client holds
one copy while a job needs it, each executor fetches it once and keeps the
unpickled object (``serialize.objects``, bounded in bytes), so its jobs
share one copy. Treat it as read-only: a job that changes it changes it for
the next jobs on that executor.
"""
from __future__ import annotations

import mmap
import pickle
import weakref
from typing import Any, Generic, TypeVar

from . import blobs, serialize
from .pickling import pack, unpack

T = TypeVar("T")


class Shared(Generic[T]):
    """A handle to an object placed once (``ClusterExecutor.share``)."""

    def __init__(self, obj: T) -> None:
        self._data = pack(obj)  # its big buffers after the pickle: views of the blob where unpacked
        self.key = blobs.digest(self._data)
        self.nbytes = len(self._data)
        blobs.register_shared(self._data, self.key)
        weakref.finalize(self, blobs.unregister_shared, id(self._data))

    def __reduce_ex__(self, protocol: int) -> Any:
        # Out of band: the pickle of the object goes as a blob reference frame.
        return _resolve, (self.key, pickle.PickleBuffer(self._data))

    def __repr__(self) -> str:
        return f"<Shared {self.key.hex()[:12]}, {self.nbytes} bytes>"


def _resolve(key: bytes, data: Any) -> Any:
    """On an executor: the object, unpickled once per executor."""
    import time

    now = time.monotonic()
    obj = serialize.objects.get(key, now)
    if obj is None:
        if isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap) and data.nbytes == len(data.obj):
            # Read-only as the client's bytes were (pickle's READONLY_BUFFER);
            # the mapping under it is this executor's, copy-on-write: its
            # arrays may be views of it, writable, as they were copies before.
            # (Only the whole mapping: a handle inside a packed function's
            # blob is a slice of it, and is copied.)
            data = data.obj
        obj = unpack(data)
        serialize.objects.put(key, obj, len(data), now)
        serialize.fetched.discard(key)  # the object is what is kept
    return obj


def share(obj: T) -> Shared[T]:
    return Shared(obj)
