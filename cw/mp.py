"""The original's ``cw.mp`` module: a cluster of local processes."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from .launch import local


def start(nworkers: int = 1, *, master: bool = True, workers: bool = True, **options: Any) -> dict:
    """Start a local master and ``nworkers`` workers; return once they registered."""
    return local.start(nworkers, master=master, workers=workers, **options)


def stop(cluster: Optional[str] = None) -> int:
    """Stop the local processes ``start`` started; return how many."""
    return local.stop(cluster)


@contextlib.contextmanager
def allocate(nworkers: int = 1, **options: Any) -> Iterator[dict]:
    info = start(nworkers, **options)
    try:
        yield info
    finally:
        stop(info["cluster"])
