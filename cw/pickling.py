"""How cw pickles: cloudpickle, keeping code objects' file names."""
from __future__ import annotations

import io
import pickle
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
