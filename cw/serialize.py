"""What travels in payload frames: jobs, results and remote errors.

A job is two frames: a JSON *context* (the client's cwd and sys.path, which
the worker must install before it unpickles anything, because functions from
importable modules are pickled by reference) and the cloudpickled call
``(func, args, kwargs)``. A result is one frame: the pickled value, or for a
failed job the pickled pair ``(pickled exception or None, traceback text)``
so the text survives an exception the client cannot unpickle.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import traceback
from typing import Any, Callable, Optional

import cloudpickle

from .errors import RemoteException, UnpicklableError

PROTOCOL = pickle.HIGHEST_PROTOCOL


def context_frame(cwd: str | None = None, path: list[str] | None = None) -> bytes:
    return json.dumps(
        {"cwd": os.getcwd() if cwd is None else cwd, "path": list(sys.path if path is None else path)}
    ).encode()


def dumps_call(func: Callable, args: tuple, kwargs: dict, jobid: object = None) -> bytes:
    """Pickle a call; on failure name the object that could not be pickled."""
    try:
        return cloudpickle.dumps((func, args, kwargs), protocol=PROTOCOL)
    except Exception as e:  # cloudpickle raises many types here
        culprit = _find_culprit(func, args, kwargs)
        what = f" of job {jobid!r}" if jobid is not None else ""
        raise UnpicklableError(
            f"cannot send {culprit}{what} to a worker: {type(e).__name__}: {e}"
        ) from e


def _find_culprit(func: Callable, args: tuple, kwargs: dict) -> str:
    candidates = [("function", func)]
    candidates += [(f"argument {i}", a) for i, a in enumerate(args)]
    candidates += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, obj in candidates:
        try:
            cloudpickle.dumps(obj, protocol=PROTOCOL)
        except Exception:
            return f"{label} {_short_repr(obj)}"
    return "the call"


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


def loads_call(frame: bytes) -> tuple[Callable, tuple, dict]:
    return pickle.loads(frame)


def dumps_value(value: Any) -> bytes:
    """A job's result: plain pickle (fast, in C) when it can, else cloudpickle.

    Plain pickle refers to classes and functions by name; one defined where
    the client cannot import it (a job's closure, ``__main__``) makes it fail,
    and cloudpickle then sends it by value.
    """
    try:
        data = pickle.dumps(value, protocol=PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=PROTOCOL)
    if b"__main__" in data:  # a by-name reference the client would resolve wrongly
        return cloudpickle.dumps(value, protocol=PROTOCOL)
    return data


def dumps_error(exc: BaseException) -> tuple[bytes, str]:
    """Pickle a job's exception with its traceback; return (frame, summary)."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        inner: Optional[bytes] = cloudpickle.dumps(exc, protocol=PROTOCOL)
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


def loads_error(frame: bytes, jobid: object = None) -> BaseException:
    """Rebuild a job's exception, with the remote traceback as its cause.

    Falls back to ``RemoteException`` (holding the text) when the exception
    cannot be unpickled here, e.g. its class exists only on the worker.
    """
    try:
        inner, text = pickle.loads(frame)
    except Exception as e:
        return RemoteException(f"undecodable error from worker: {e}", jobid)
    if isinstance(inner, bytes):
        try:
            exc = pickle.loads(inner)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            exc.__cause__ = RemoteTraceback(text)
            return exc
    return RemoteException(text, jobid)


def error_text(exc: BaseException) -> str:
    """The remote traceback text of an exception built by ``loads_error``."""
    if isinstance(exc, RemoteException):
        return exc.text
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        return cause.text
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
