"""cw: run many Python function calls on a cluster of workers.

Public API only; see README.md. ``start``/``stop``/``allocate`` pick SLURM
when it is available, else local processes.
"""
from __future__ import annotations

from .client import ClientThread, ClusterExecutor, JobInfo, SlurmExecutor
from .errors import (
    ClusterError,
    CWError,
    JobRejectedError,
    MasterUnavailableError,
    ProtocolError,
    RemoteException,
    SecurityError,
    UnpicklableError,
    WorkerLostError,
)
from .launch.auto import allocate, randid, start, stop

__version__ = "0.1.0"

__all__ = [
    "ClientThread",
    "ClusterExecutor",
    "JobInfo",
    "SlurmExecutor",
    "CWError",
    "ClusterError",
    "JobRejectedError",
    "SecurityError",
    "MasterUnavailableError",
    "ProtocolError",
    "RemoteException",
    "UnpicklableError",
    "WorkerLostError",
    "allocate",
    "randid",
    "start",
    "stop",
    "__version__",
]
