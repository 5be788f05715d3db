"""cw: run many Python function calls on a cluster of workers.

Public API only; see README.md. ``start``/``stop``/``allocate`` pick SLURM
when it is available, else local processes.
"""
from __future__ import annotations

import importlib as _importlib
import typing as _typing

from .errors import (
    ClusterError,
    CWError,
    JobRejectedError,
    JournalError,
    JournalMismatchError,
    MasterUnavailableError,
    ProtocolError,
    RemoteException,
    SecurityError,
    UnpicklableError,
    WorkerLostError,
)

# The client API and the launchers load on first use: ``python -m cw.master``,
# ``cw.worker`` and ``cw.executor`` import this package first, and need
# neither (their imports are most of a master's or an executor's start-up).
_LAZY = {name: ".client" for name in ("ClientThread", "ClusterExecutor", "JobInfo", "SlurmExecutor")}
_LAZY.update({name: ".launch.auto" for name in ("allocate", "is_slurm_available", "randid", "start",
                                                 "stop")})
PORT = 5494  # the master's default port, as the original's cw.PORT (cw.protocol.DEFAULT_PORT)

if _typing.TYPE_CHECKING:  # type checkers see the names themselves, and flag misspelt ones
    from .client import ClientThread, ClusterExecutor, JobInfo, SlurmExecutor
    from .launch.auto import allocate, is_slurm_available, randid, start, stop
else:
    def __getattr__(name):
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'cw' has no attribute {name!r}")
        value = getattr(_importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def __dir__():
        return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "ClientThread",
    "ClusterExecutor",
    "JobInfo",
    "SlurmExecutor",
    "CWError",
    "ClusterError",
    "JobRejectedError",
    "JournalError",
    "JournalMismatchError",
    "SecurityError",
    "MasterUnavailableError",
    "ProtocolError",
    "RemoteException",
    "UnpicklableError",
    "WorkerLostError",
    "PORT",
    "allocate",
    "is_slurm_available",
    "randid",
    "start",
    "stop",
    "__version__",
]
