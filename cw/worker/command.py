"""``cw worker`` and ``python -m cw.worker``: a worker, started by hand or by a launcher."""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional

import click

from ..cli_common import (
    PORT,
    Procs,
    apply_options,
    cluster_option,
    friendly,
    heartbeat_options,
    insecure_option,
    log_option,
)
from ..logfiles import role_log_file, setup_logging


def _gpus(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    from ..resources import gpu_ids

    try:
        return gpu_ids(value)
    except ValueError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from e


def _mem(ctx: click.Context, param: click.Parameter, value: Optional[str]) -> Optional[int]:
    from ..resources import parse_size

    try:
        return None if value is None else parse_size(value, "--mem")
    except ValueError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from e


@click.command("worker")
@click.argument("host", required=False)
@click.option("--port", type=PORT, envvar="CW_PORT", default=None,
              help="Master port [default: from master.json, else 5494].")
@click.option("--procs", type=Procs(), default="1", show_default=True,
              help="Executor processes; 'auto' = the CPUs this worker may use.")
@click.option("--slurm", is_flag=True, help="Find the master through SLURM's queue.")
@click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds a running job may take to finish on SIGTERM.")
@click.option("--prefetch", type=click.IntRange(0, 64), default=1, show_default=True,
              help="Tasks each executor holds beyond the one it runs, while jobs take 20 ms "
                   "or less (longer ones always start on the first free executor).")
@click.option("--batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Most tasks an executor holds while its jobs take about a millisecond or "
                   "less, to save messages (1: never more than --prefetch allows).")
@click.option("--express/--no-express", default=True, show_default=True, envvar="CW_EXPRESS",
              help="Also run a spare executor that takes only quick jobs (20 ms or less) of a "
                   "client with nothing else running: its jobs need not wait behind another "
                   "client's long ones.")
@click.option("--time-left", type=click.FloatRange(0), default=None,
              help="Seconds until this worker is stopped, so that no job said to take longer "
                   "(submit(expected=)) goes to it [default: SLURM's time limit, less 15 s, "
                   "else none].")
@click.option("--idle-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Leave once no executor has run a job for this many seconds (workers a "
                   "scaler started: `slurm.py start --adapt`) [default: stay].")
@click.option("--master-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Exit when the master is silent this many seconds, counted from the start "
                   "(no orphans once it is gone) [default: wait for it forever].")
@click.option("--gpus", envvar="CW_GPUS", default="auto", show_default=True, callback=_gpus,
              help="GPUs for jobs that ask for them (resources={'gpus': N}): auto = "
                   "CUDA_VISIBLE_DEVICES (SLURM sets it), else SLURM_JOB_GPUS, else nvidia-smi's; a count; "
                   "none; or device ids such as 0,1,3. Each such job sees only its own "
                   "(CUDA_VISIBLE_DEVICES).")
@click.option("--cpus", type=click.IntRange(1), envvar="CW_CPUS", default=None,
              help="CPUs that jobs' resources={'cpus': N} count against [default: "
                   "SLURM_CPUS_ON_NODE, else those this worker may use].")
@click.option("--mem", envvar="CW_MEM", default=None, callback=_mem,
              help="Memory that jobs' resources={'mem': ...} count against, e.g. 64G "
                   "[default: SLURM_MEM_PER_NODE, else the machine's].")
@click.option("--follow/--no-follow", default=None,
              help="When the master goes silent, go where the cluster's master.json says it is "
                   "now (a successor master job) [default: if it named this master at the start].")
@cluster_option
@insecure_option
@apply_options(heartbeat_options)
@log_option
@friendly
def worker_command(host: Optional[str], port: Optional[int], procs: int, slurm: bool,
                   grace: float, prefetch: int, batch: int, express: bool, time_left: Optional[float],
                   idle_timeout: Optional[float], master_timeout: Optional[float], gpus: list[str],
                   cpus: Optional[int], mem: Optional[int], follow: Optional[bool],
                   cluster: Optional[str], insecure: bool,
                   heartbeat: float, liveness: int, log_level: str) -> None:
    """Run a worker for the master at HOST [default: from the cluster directory]."""
    from ..cluster import cluster_dir, cluster_name, master_address
    from ..discovery import find_master
    from ..resources import worker_has
    from ..security import worker_keys
    from .supervisor import Supervisor

    logfile = role_log_file(cluster, "worker")
    setup_logging(log_level, logfile)
    if logfile is not None:  # the executors it starts log to the same file, at the same level
        os.environ["CW_LOG_FILE"] = str(logfile)
    os.environ["CW_LOG_LEVEL"] = log_level
    keys = None if insecure else worker_keys(cluster_dir(cluster))
    if slurm and host is None:
        from ..squeue import master_host

        host = master_host(cluster, wait=True)
    host, port = find_master(host, port, cluster)
    if follow is None:
        follow = master_address(cluster) == f"tcp://{host}:{port}"
    sup = Supervisor(host, port, procs, heartbeat=heartbeat, liveness=liveness, grace=grace,
                     keys=keys, cluster=cluster_name(cluster), prefetch=prefetch, batch=batch,
                     master_timeout=master_timeout, express=express, time_left=_time_left(time_left),
                     idle_timeout=idle_timeout,
                     resources=worker_has(cpus, mem, gpus, procs), follow=follow)

    def on_signal(signum: int, frame: Any) -> None:
        sup.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sup.run()
    sys.exit(sup.exit_code)


STOP_MARGIN = 15.0  # seconds: slurm.py's --signal=B:TERM@(grace + 15) drains a worker that long ahead


def _time_left(given: Optional[float]) -> Optional[float]:
    """What ``--time-left`` says, else SLURM's time left less ``STOP_MARGIN``."""
    if given is not None:
        return given
    from ..squeue import time_left

    left = time_left()
    return None if left is None else max(0.0, left - STOP_MARGIN)
