"""The original's ``cw.slurm`` module: a cluster of SLURM jobs.

``start(nworkers, master, workers, master_options, worker_options,
docker_image, docker_args)``, ``stop(master, workers)``, ``allocate(...)``
and ``master_host()`` as the original defines them, with cw's own options
beside them. The squeue helpers live in ``cw.squeue``, which every role may
import; this module is the original's public path to them.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

from .squeue import available, job_name, master_host

__all__ = ["allocate", "available", "job_name", "master_host", "start", "stop"]


def start(nworkers: int = 1, master: bool = True, workers: bool = True,
          master_options: Sequence[str] = (), worker_options: Sequence[str] = (),
          docker_image: Optional[str] = None, docker_args: str = "", **options: Any) -> dict:
    """Submit the master and ``nworkers`` worker jobs; return once they answer.
    ``master_options``/``worker_options``: sbatch options of those jobs."""
    from .launch import auto

    return auto.start(nworkers, master, workers, master_options, worker_options, docker_image,
                      docker_args, launcher="slurm", **options)


def stop(master: bool = True, workers: bool = True, cluster: Optional[str] = None) -> int:
    """Drain and end the workers' jobs, the master's, or both; return jobs ended."""
    from .launch import auto

    return auto.stop(master, workers, launcher="slurm", cluster=cluster)


def allocate(nworkers: int = 1, master: bool = True, workers: bool = True,
             master_options: Sequence[str] = (), worker_options: Sequence[str] = (),
             docker_image: Optional[str] = None, docker_args: str = "",
             **options: Any) -> contextlib.AbstractContextManager[dict]:
    """``with cw.slurm.allocate(8):`` SLURM jobs for the duration of the block."""
    from .launch import auto

    return auto.allocate(nworkers, master, workers, master_options, worker_options, docker_image,
                         docker_args, launcher="slurm", **options)
