"""The original's ``cw.mp`` module: a cluster of local processes."""
from __future__ import annotations

import contextlib
from typing import Any, Optional

from .launch import auto, local


def start(nworkers: int = 1, *, master: bool = True, workers: bool = True, **options: Any) -> dict:
    """Start a local master and ``nworkers`` workers; return once they registered."""
    return local.start(nworkers, master=master, workers=workers, **options)


def stop(cluster: Optional[str] = None) -> int:
    """Stop the local processes ``start`` started; return how many."""
    return local.stop(cluster)


def allocate(nworkers: int = 1, **options: Any) -> contextlib.AbstractContextManager[dict]:
    """``with cw.mp.allocate(4):`` a local cluster for the duration of the block."""
    return auto.allocate(nworkers, launcher="local", **options)
