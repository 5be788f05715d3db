"""The original's ``cw.mp`` module: a cluster of local processes.

``start(nworkers, master=True, workers=True)`` and ``stop(master=True,
workers=True)`` as the original defines them (positionally or by keyword),
with cw's own options (``cluster=``, ``port=``, ``procs=``...) beside them.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

from .launch import auto, local


def start(nworkers: int = 1, master: bool = True, workers: bool = True, **options: Any) -> dict:
    """Start a local master and ``nworkers`` workers; return once they registered."""
    return local.start(nworkers, master=master, workers=workers, **options)


def stop(master: bool = True, workers: bool = True, cluster: Optional[str] = None) -> int:
    """Stop the local workers, the master, or both; return how many processes."""
    return local.stop(cluster, master=master, workers=workers)


def allocate(nworkers: int = 1, master: bool = True, workers: bool = True,
             **options: Any) -> contextlib.AbstractContextManager[dict]:
    """``with cw.mp.allocate(4):`` a local cluster for the duration of the block."""
    return auto.allocate(nworkers, master, workers, launcher="local", **options)
