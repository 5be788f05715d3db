"""The worker: a supervisor process and the executor processes it keeps alive.

``cw.worker.supervisor`` starts executors (``cw.worker.executor``), tells the
master when one dies and samples their usage (``cw.worker.usage``); both
talk to the master through ``cw.worker.peer``. An executor's end of a lane
is ``cw.worker.lane``; a job's prints go to the worker's log through
``cw.worker.joblog``. ``python -m cw.worker`` runs ``cw.worker.command``.

Names load on first use: an executor imports this package first, and needs
none of the supervisor's imports.
"""
from __future__ import annotations

import importlib as _importlib
import typing as _typing

_LAZY = {"Supervisor": ".supervisor", "cpus_available": "..host", "worker_command": ".command"}

if _typing.TYPE_CHECKING:
    from ..host import cpus_available
    from .command import worker_command
    from .supervisor import Supervisor
else:
    def __getattr__(name):
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'cw.worker' has no attribute {name!r}")
        return getattr(_importlib.import_module(module, __name__), name)


def main(argv: _typing.Optional[list] = None) -> None:
    from .command import worker_command

    worker_command.main(args=argv, prog_name="python -m cw.worker")


__all__ = ["Supervisor", "cpus_available", "main", "worker_command"]
