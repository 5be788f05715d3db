"""SLURM launcher: master and workers as sbatch jobs named after the cluster.

Jobs are ``cw-master-<cluster>`` and ``cw-worker-<cluster>`` (a job array),
so one user can run several clusters side by side; their logs go to the
cluster directory. Commands are built by pure functions (``sbatch_command``,
``job_script``) with every value passed as a separate argument or through
``shlex.quote``.
"""
from __future__ import annotations

import getpass
import shlex
import subprocess
import sys
from typing import Optional, Sequence

from ..cluster import cluster_dir, cluster_name, read_json
from ..errors import ClusterError
from ..protocol import DEFAULT_PORT
from ..slurm import job_name
from . import query_status, wait_until


def job_script(command: Sequence[str]) -> str:
    """The batch script: exec the command, so SLURM's signals reach it."""
    return f"#!/bin/sh\nexec {shlex.join(command)}\n"


def sbatch_command(*, job_name: str, output: str, partition: Optional[str] = None,
                   time: Optional[str] = None, array: Optional[int] = None,
                   signal: Optional[str] = None, exclusive: bool = False,
                   extra: Sequence[str] = ()) -> list[str]:
    cmd = ["sbatch", "--parsable", f"--job-name={job_name}", f"--output={output}"]
    if partition:
        cmd.append(f"--partition={partition}")
    if time:
        cmd.append(f"--time={time}")
    if array:
        cmd.append(f"--array=0-{array - 1}")
    if signal:
        cmd.append(f"--signal={signal}")
    if exclusive:
        cmd.append("--exclusive")
    return [*cmd, *extra]


def _sbatch(cmd: list[str], script: str) -> str:
    try:
        done = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"sbatch failed: {e}") from e
    if done.returncode != 0:
        raise ClusterError(f"sbatch refused the job: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def start(nworkers: int = 1, *, master: bool = True, workers: bool = True,
          cluster: Optional[str] = None, port: Optional[int] = None, procs: int = 1,
          partition: Optional[str] = None, time: Optional[str] = None, grace: float = 30.0,
          isolated: bool = False, xmaster: Sequence[str] = (), xworkers: Sequence[str] = (),
          timeout: float = 300.0) -> dict:
    name = cluster_name(cluster)
    logs = cluster_dir(name, create=True) / "logs"
    info: Optional[dict] = None
    if master:
        cmd = sbatch_command(job_name=job_name("master", name), output=str(logs / "master-%j.log"),
                             partition=partition, time=time, extra=xmaster)
        jobid = _sbatch(cmd, job_script([sys.executable, "-m", "cw.master", "--cluster", name,
                                         "--port", str(DEFAULT_PORT if port is None else port)]))
        info = wait_until(lambda: _master_of_job(name, jobid), timeout, poll=1.0)
        if info is None:
            raise ClusterError(f"master job {jobid} did not come up within {timeout:g} s; see {logs}")
        query_status(info["host"], info["port"], timeout=timeout, cluster=name)
    else:
        info = read_json(cluster_dir(name) / "master.json")
        if info is None:
            raise ClusterError(f"no master.json for cluster {name!r}; start a master or drop -M")
    if workers and nworkers:
        cmd = sbatch_command(job_name=job_name("worker", name), output=str(logs / "worker-%A_%a.log"),
                             partition=partition, time=time, array=nworkers,
                             signal=f"B:TERM@{int(grace) + 10}", exclusive=isolated, extra=xworkers)
        _sbatch(cmd, job_script([sys.executable, "-m", "cw.worker", info["host"], "--port",
                                 str(info["port"]), "--procs", str(procs), "--grace", str(grace)]))
        have = wait_until(lambda: _enough_workers(info, nworkers, name), timeout, poll=1.0)
        if have is None:
            raise ClusterError(f"workers did not all register within {timeout:g} s; see {logs}")
    return {"cluster": name, "host": info["host"], "port": info["port"], "worker_pids": []}


def _master_of_job(name: str, jobid: str) -> Optional[dict]:
    info = read_json(cluster_dir(name) / "master.json")
    return info if info and str(info.get("slurm_job")) == jobid else None


def _enough_workers(info: dict, n: int, name: str) -> Optional[dict]:
    snap = query_status(info["host"], info["port"], cluster=name)
    return snap if len(snap["workers"]) >= n else None


def stop(cluster: Optional[str] = None) -> int:
    """scancel this cluster's workers (they drain on SIGTERM), then its master."""
    name = cluster_name(cluster)
    count = 0
    for role in ("worker", "master"):
        cmd = ["scancel", "--signal=TERM", "--full", "-u", getpass.getuser(), "-n", job_name(role, name)]
        count += subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    return count
