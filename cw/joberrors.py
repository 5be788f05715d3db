"""A failed job's exception on its way back: pickled with its traceback
text on the worker, rebuilt on the client as its own type and
``RemoteException`` at once (``cw.errors.remote_twin``)."""
from __future__ import annotations

import linecache
import pickle
import re
import traceback
from typing import Optional

from .errors import RemoteException, remote_twin
from .pickling import PROTOCOL, cloudpickle_dumps


def dumps_error(exc: BaseException) -> tuple[bytes, str]:
    """Pickle a job's exception with its traceback; return (frame, summary)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        inner: Optional[bytes] = cloudpickle_dumps(exc)
        pickle.loads(inner)  # type: ignore[arg-type]  # one that pickles but won't unpickle
    except Exception:
        inner = None
    summary = traceback.format_exception_only(type(exc), exc)[-1].strip()[:1000]
    return pickle.dumps((inner, text), protocol=PROTOCOL), summary


class RemoteTraceback(Exception):
    """Carries a worker's traceback text; set as ``__cause__`` of a job's error."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


_FRAME = re.compile(r'  File "([^"]+)", line (\d+), in .*')


def _with_source(text: str) -> str:
    """A remote traceback with the source line of each frame the worker
    could not read (a file it does not have), taken from here."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        out.append(line)
        m = _FRAME.fullmatch(line)
        if m and not (i + 1 < len(lines) and lines[i + 1].startswith("    ")):
            source = linecache.getline(m.group(1), int(m.group(2))).strip()
            if source:
                out.append(f"    {source}")
    return "\n".join(out)


def loads_error(frame: bytes, jobid: object = None) -> BaseException:
    """Rebuild a job's exception, with the remote traceback as its cause.

    Falls back to ``RemoteException`` (holding the text) when the exception
    cannot be unpickled here, e.g. its class exists only on the worker.
    """
    try:
        inner, text = pickle.loads(frame)
        text = _with_source(text)
    except Exception as e:
        return RemoteException(f"undecodable error from worker: {e}", jobid)
    if isinstance(inner, bytes):
        try:
            exc = pickle.loads(inner)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc = remote_twin(exc, text, jobid)  # caught as its own type and as RemoteException
            exc.__cause__ = RemoteTraceback(text)
            return exc
    return RemoteException(text, jobid, _type_name(text))


def _type_name(text: str) -> Optional[str]:
    """The exception type a traceback text ends with, if it says."""
    last = text.rstrip().rpartition("\n")[2]
    name = last.partition(":")[0].strip()
    return name if name.replace(".", "").replace("_", "").isalnum() else None


def error_text(exc: BaseException) -> str:
    """The remote traceback text of an exception built by ``loads_error``."""
    if isinstance(exc, RemoteException):
        return exc.text
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        return cause.text
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
