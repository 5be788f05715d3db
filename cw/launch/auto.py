"""``cw.start/stop/allocate``: SLURM when it is available, else local processes."""
from __future__ import annotations

import contextlib
import os
import secrets
import sys
from typing import Any, Iterator, Optional, Sequence

from .. import squeue


def randid() -> int:
    """A random 128-bit integer, as the original's ``cw.randid()``: job ids."""
    return secrets.randbits(128)


def is_slurm_available() -> bool:
    """Whether SLURM is here: ``sbatch`` on PATH and its controller answering."""
    return squeue.available()


def _launcher(launcher: Optional[str]):
    from . import docker, local
    from . import slurm as slurm_launcher

    choices = {"local": local, "slurm": slurm_launcher, "docker": docker}
    if launcher is None:
        launcher = os.environ.get("CW_LAUNCHER") or ("slurm" if squeue.available() else "local")
    if launcher not in choices:
        raise ValueError(f"unknown launcher {launcher!r}; choose from: {', '.join(choices)}")
    return choices[launcher]


def start(nworkers: int = 1, master: bool = True, workers: bool = True,
          master_options: Sequence[str] = (), worker_options: Sequence[str] = (),
          docker_image: Optional[str] = None, docker_args: str = "", *,
          launcher: Optional[str] = None, **options: Any) -> dict:
    """Start a cluster of ``nworkers`` workers; return once they registered.

    The original's arguments, positionally or by keyword: ``master`` and
    ``workers`` say which to start; ``master_options`` and ``worker_options``
    are sbatch options of the master's and the workers' jobs (SLURM only);
    ``docker_image`` and ``docker_args`` run the workers in containers (on
    SLURM, or as the docker launcher's image). ``launcher``: "local",
    "slurm" or "docker"; default ``$CW_LAUNCHER``, else SLURM when
    ``sbatch`` is on PATH and its controller answers, else local.
    """
    chosen = _launcher(launcher)
    kind = chosen.__name__.rsplit(".", 1)[-1]
    if options.get("adapt") is not None and kind != "slurm":
        from ..errors import ClusterError

        raise ClusterError(f"adapt= follows SLURM's queue: the {kind} launcher starts a fixed "
                           "number of workers")
    options = _original_options(kind, master_options, worker_options, docker_image, docker_args, options)
    if master:
        _refuse_a_second_master(options.get("cluster"))
    info = chosen.start(nworkers, master=master, workers=workers, **options)
    where = {"local": f"{len(info.get('worker_pids', ()))} worker(s)",
             "slurm": f"{info.get('registered', 0)} worker(s) registered",
             "docker": f"{len(info.get('containers', ()))} container(s)"}[kind]
    # Where it runs, said once: a newcomer should not guess which launcher was picked.
    print(f"cw: started a {kind} cluster {info['cluster']!r}: master at {info['host']}:{info['port']}, "
          f"{where if workers else 'no workers'}"
          + (f"; dashboard {info['http']}" if info.get("http") else ""), file=sys.stderr)
    return info


def _refuse_a_second_master(cluster: Optional[str]) -> None:
    """A program's cw.start() while the cluster runs: said in Python's terms."""
    from ..cluster import cluster_name, read_master
    from ..errors import ClusterError

    running = read_master(cluster)
    if running is not None:
        name = cluster_name(cluster)
        raise ClusterError(
            f"cluster {name!r} is already running (master at {running['host']}:{running['port']}): "
            f"use it as it is (ClusterExecutor() finds it), call cw.stop() first, add workers "
            f"to it with cw.start(n, master=False), or start another with cluster='another-name'")


def _original_options(launcher: str, master_options: Sequence[str], worker_options: Sequence[str],
                      docker_image: Optional[str], docker_args: str, options: dict) -> dict:
    """The original's start arguments as the launcher's own options."""
    if launcher == "slurm":
        if master_options:
            options["xmaster"] = [*options.get("xmaster", ()), *master_options]
        if worker_options:
            options["xworkers"] = [*options.get("xworkers", ()), *worker_options]
    elif master_options or worker_options:
        raise ValueError("master_options and worker_options are sbatch options: only the SLURM "
                         f"launcher takes them, not {launcher!r} (pass launcher='slurm')")
    if docker_image is not None:
        options["image" if launcher == "docker" else "docker_image"] = docker_image
    if docker_args:
        options["args" if launcher == "docker" else "docker_args"] = docker_args
    if launcher == "local" and ("docker_image" in options or "docker_args" in options):
        raise ValueError("docker_image runs workers in containers: use launcher='docker' "
                         "(one machine) or 'slurm'")
    return options


def stop(master: bool = True, workers: bool = True, *, launcher: Optional[str] = None,
         cluster: Optional[str] = None) -> int:
    """Stop the cluster ``start`` started: its workers (they drain first), its
    master, or both, as the original's ``stop(master, workers)``; return how
    many processes, jobs or containers were stopped."""
    return _launcher(launcher).stop(cluster=cluster, master=master, workers=workers)


@contextlib.contextmanager
def allocate(nworkers: int = 1, master: bool = True, workers: bool = True,
             master_options: Sequence[str] = (), worker_options: Sequence[str] = (),
             docker_image: Optional[str] = None, docker_args: str = "", *,
             launcher: Optional[str] = None, **options: Any) -> Iterator[dict]:
    """``with cw.allocate(4):`` a cluster for the duration of the block
    (``start``'s arguments); what it started is stopped at the end."""
    info = start(nworkers, master, workers, master_options, worker_options, docker_image,
                 docker_args, launcher=launcher, **options)
    try:
        yield info
    finally:
        stop(master, workers, launcher=launcher, cluster=info["cluster"])
