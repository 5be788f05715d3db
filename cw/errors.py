"""Exceptions a cw user can see.

Two kinds, never mixed: a job's own exception comes back with its own type
(see ``cw.serialize``); everything that goes wrong in the infrastructure is a
``CWError``.
"""
from __future__ import annotations

import pickle
from typing import Optional


class CWError(Exception):
    """Base class of every failure of cw itself (not of a user's job)."""


class JournalError(CWError):
    """A sweep's journal cannot be used: its file, or what it holds (cw.journal)."""


class JournalMismatchError(JournalError):
    """The journal holds results of another version of a function's code."""


class ProtocolError(CWError):
    """A message did not follow the wire protocol (bad frames, bad header)."""


class MasterUnavailableError(CWError, ConnectionError):
    """No master answered at the address tried within ``connect_timeout``."""


class WorkerLostError(CWError):
    """The worker running a job died more times than the job's retries allow."""


class JobRejectedError(CWError):
    """The master refused a job (a limit reached, a malformed message); it did not run."""


class UnpicklableError(CWError, pickle.PicklingError):
    """A function or argument given to ``submit`` cannot be pickled."""


class SecurityError(CWError):
    """Keys are missing or unsafe, the two ends disagree on CURVE, or the
    master refused this peer's key."""


class BlobUnavailableError(CWError):
    """A job's function or argument, sent once by reference (cw.blobs), could not be had from its client."""


class ClusterError(CWError):
    """A launcher could not start, find or stop a cluster."""


class RemoteException(CWError):
    """A job raised an exception on a worker.

    ``text`` (and ``error``, the original cluster-workers' name for it) holds
    the remote traceback. A failed job's exception is an instance of both
    its own type and this one (``remote_twin``): ``except ValueError`` and
    ``except RemoteException`` both catch it. Where the job's type cannot
    be had here (or cannot be subclassed) it is a plain ``RemoteException``
    whose ``type_name`` names it.
    """

    def __init__(self, text: str, jobid: object = None, type_name: Optional[str] = None) -> None:
        super().__init__(text)
        self.text = self.error = text
        self.jobid = jobid
        self.type_name = type_name

    def __reduce__(self):  # keep jobid across pickling
        return (type(self), (self.text, self.jobid, self.type_name))


_twins: dict = {}  # a job's exception type -> its twin deriving from RemoteException too (None: none can)


def remote_twin(exc: BaseException, text: str, jobid: object = None) -> BaseException:
    """``exc`` as an instance of a class deriving from both its type and
    ``RemoteException``, with the remote traceback in ``text``/``error``;
    a plain ``RemoteException`` where Python allows no such class."""
    cls = type(exc)
    if isinstance(exc, RemoteException):
        return exc
    if cls not in _twins:
        # Exception itself (a base of RemoteException already): a subclass of ours alone.
        bases = (RemoteException,) if issubclass(RemoteException, cls) else (cls, RemoteException)
        try:
            _twins[cls] = type(cls.__name__, bases, {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__reduce__": lambda self: self._cw_original.__reduce__()})  # unpickles as the job's own
        except TypeError:  # a final type, or one whose layout cannot be joined
            _twins[cls] = None
    twin = _twins[cls]
    if twin is None:
        return RemoteException(text, jobid, f"{cls.__module__}.{cls.__qualname__}")
    try:
        new = cls.__new__(twin, *exc.args)
    except Exception:
        new = BaseException.__new__(twin)
    new.__dict__.update(exc.__dict__)
    new.args = exc.args
    if isinstance(exc, OSError):  # attributes of its own, beside args
        new.filename, new.filename2 = exc.filename, exc.filename2
    new._cw_original = exc
    new.text = new.error = text
    new.jobid, new.type_name = jobid, f"{cls.__module__}.{cls.__qualname__}"
    return new
