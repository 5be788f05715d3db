"""``cw.start/stop/allocate``: SLURM when it is available, else local processes."""
from __future__ import annotations

import contextlib
import os
import secrets
from typing import Any, Iterator, Optional

from .. import slurm


def randid() -> str:
    """A random identifier, e.g. for job ids or cluster names."""
    return secrets.token_hex(8)


def _launcher(launcher: Optional[str]):
    from . import docker, local
    from . import slurm as slurm_launcher

    choices = {"local": local, "slurm": slurm_launcher, "docker": docker}
    if launcher is None:
        launcher = os.environ.get("CW_LAUNCHER") or ("slurm" if slurm.available() else "local")
    if launcher not in choices:
        raise ValueError(f"unknown launcher {launcher!r}; choose from: {', '.join(choices)}")
    return choices[launcher]


def start(nworkers: int = 1, *, master: bool = True, workers: bool = True,
          launcher: Optional[str] = None, **options: Any) -> dict:
    """Start a cluster of ``nworkers`` workers; return once they registered.

    ``launcher``: "local", "slurm" or "docker" (which needs ``image=``);
    default ``$CW_LAUNCHER``, else SLURM when ``sbatch`` is on PATH and its
    controller answers, else local.
    """
    return _launcher(launcher).start(nworkers, master=master, workers=workers, **options)


def stop(*, launcher: Optional[str] = None, cluster: Optional[str] = None) -> int:
    """Stop the cluster ``start`` started (workers first, then the master)."""
    return _launcher(launcher).stop(cluster=cluster)


@contextlib.contextmanager
def allocate(nworkers: int = 1, *, master: bool = True, workers: bool = True,
             launcher: Optional[str] = None, **options: Any) -> Iterator[dict]:
    """``with cw.allocate(4):`` a cluster for the duration of the block."""
    info = start(nworkers, master=master, workers=workers, launcher=launcher, **options)
    try:
        yield info
    finally:
        stop(launcher=launcher, cluster=info["cluster"])
