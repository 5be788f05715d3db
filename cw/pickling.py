"""How cw pickles: cloudpickle, keeping code objects' file names."""
from __future__ import annotations

import io
import pickle
import struct
import types
from collections import ChainMap
from typing import Any, Callable, Optional

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


def _code_reduce(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, keeping its file name:
    cloudpickle writes ``<dynamic-code>`` there, and a remote traceback of
    a function from the client's script then names no file and no line."""
    rebuild, args = _CLOUDPICKLE_CODE_REDUCE(code)
    return rebuild, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)


_CLOUDPICKLE_CODE_REDUCE = getattr(cloudpickle.cloudpickle, "_code_reduce", None)  # private: may go


class _Pickler(cloudpickle.Pickler):
    if _CLOUDPICKLE_CODE_REDUCE is not None:
        dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)


def cloudpickle_dumps(obj: Any, buffer_callback: Optional[Callable] = None) -> bytes:
    """``cloudpickle.dumps``, with code objects' file names kept."""
    out = io.BytesIO()
    _Pickler(out, protocol=PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


# A packed pickle: the pickle, then its big buffers, each at an offset
# aligned to ``ALIGN``. Unpacked, the buffers are views of the packed bytes,
# not copies: a big closure's array (or a share()d object's) then lives in
# the blob itself, which the executors of a host map from its one copy
# (cw.worker.hostcache), copy-on-write. A plain pickle starts b"\x80".
PACKED = b"cwP1"
ALIGN = 64
PACK_FROM = 64 * 1024  # buffers from this size follow the pickle
_HEAD = struct.Struct("<4sIQ")  # magic, buffer count, pickle length; then one u64 length a buffer


def pack(obj: Any) -> bytes:
    """``obj`` cloudpickled, its buffers of ``PACK_FROM`` bytes or more after
    the pickle (see above); a plain pickle when it has none."""
    buffers: list = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        raw = buf.raw()
        if raw.nbytes < PACK_FROM:
            return True
        buffers.append(raw)
        return False

    data = cloudpickle_dumps(obj, out_of_band)
    if not buffers:
        return data
    lengths = [b.nbytes for b in buffers]
    head = _HEAD.pack(PACKED, len(lengths), len(data)) + struct.pack(f"<{len(lengths)}Q", *lengths)
    parts: list = [head, data]
    offset = sum(map(len, parts))
    for buf in buffers:
        parts += [bytes(-offset % ALIGN), buf]
        offset += -offset % ALIGN + buf.nbytes
    return b"".join(parts)


def unpack(data: Any) -> Any:
    """What ``pack`` packed (or a plain pickle). Its buffers are writable
    views of ``data``; read-only ``data`` is copied once first."""
    view = memoryview(data).cast("B")
    if bytes(view[:4]) != PACKED:
        return pickle.loads(view)
    if view.readonly:
        view = memoryview(bytearray(view))
    try:
        _, count, size = _HEAD.unpack_from(view)
        offset = _HEAD.size + 8 * count
        lengths = struct.unpack_from(f"<{count}Q", view, _HEAD.size)
    except struct.error as e:
        raise ValueError(f"a damaged packed pickle: {e}") from None
    end = offset + size
    buffers = []
    for length in lengths:
        start = end + -end % ALIGN
        end = start + length
        buffers.append(view[start:end])
    if end > len(view):
        raise ValueError(f"a damaged packed pickle: {len(view)} bytes, its parts need {end}")
    return pickle.loads(view[offset:offset + size], buffers=buffers)
