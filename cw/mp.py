"""The original's ``cw.mp`` module: a cluster of local processes.

``start(nworkers, master=True, workers=True)`` and ``stop(master=True,
workers=True)`` as the original defines them (positionally or by keyword),
with cw's own options (``cluster=``, ``port=``, ``procs=``...) beside them.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from .launch import local


def start(nworkers: int = 1, master: bool = True, workers: bool = True, **options: Any) -> dict:
    """Start a local master and ``nworkers`` workers; return once they registered."""
    return local.start(nworkers, master=master, workers=workers, **options)


def stop(master: bool = True, workers: bool = True, cluster: Optional[str] = None) -> int:
    """Stop the local workers, the master, or both; return how many processes."""
    return local.stop(cluster, master=master, workers=workers)


@contextlib.contextmanager
def allocate(nworkers: int = 1, master: bool = True, workers: bool = True,
             **options: Any) -> Iterator[dict]:
    """``with cw.mp.allocate(4):`` a local cluster for the duration of the block."""
    info = start(nworkers, master, workers, **options)
    try:
        yield info
    finally:
        stop(master, workers, cluster=info["cluster"])
