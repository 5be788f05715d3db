"""Exceptions a cw user can see.

Two kinds, never mixed: a job's own exception comes back with its own type
(see ``cw.serialize``); everything that goes wrong in the infrastructure is a
``CWError``.
"""
from __future__ import annotations

import pickle


class CWError(Exception):
    """Base class of every failure of cw itself (not of a user's job)."""


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

    The text holds the remote traceback. ``ClientThread.wait`` raises it for
    the first failed job; futures raise the job's own exception type when it
    can be unpickled on the client, and ``RemoteException`` otherwise.
    """

    def __init__(self, text: str, jobid: object = None) -> None:
        super().__init__(text)
        self.text = text
        self.jobid = jobid

    def __reduce__(self):  # keep jobid across pickling
        return (type(self), (self.text, self.jobid))
