"""SLURM's queue, as every role asks it: is SLURM here, and which node runs
this user's master job of a cluster.

The master runs as an sbatch job named ``cw-master-<cluster>``; its node is
found through ``squeue`` (this user, this cluster).
"""
from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import time
from typing import Mapping, Optional

from .cluster import cluster_name
from .errors import ClusterError

_available: Optional[bool] = None


def available() -> bool:
    """True when ``sbatch`` is on PATH and a SLURM controller answers."""
    global _available
    if _available is None:
        _available = False
        if shutil.which("sbatch") and shutil.which("squeue") and shutil.which("scontrol"):
            try:
                _available = subprocess.run(
                    ["scontrol", "ping"], capture_output=True, timeout=10
                ).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                pass
    return _available


def time_left(environ: Mapping[str, str] = os.environ) -> Optional[float]:
    """Seconds until this SLURM job's time limit; None outside a SLURM job,
    without a limit, or when SLURM cannot say. From ``SLURM_JOB_END_TIME``
    (SLURM 23.02 and later) where set, else one ``squeue`` call."""
    end = environ.get("SLURM_JOB_END_TIME", "")
    if end.isdigit():
        return int(end) - time.time()
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_time_left(out.strip())


def parse_time_left(text: str) -> Optional[float]:
    """squeue's ``%L``: ``[D-][HH:]MM:SS`` in seconds; None for UNLIMITED, NOT_SET, INVALID."""
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def jobs(fields: str, *, name: Optional[str] = None, states: Optional[str] = None,
         tasks: bool = False, timeout: float = 30) -> Optional[list[list[str]]]:
    """This user's jobs, one ``squeue`` call: each job's ``fields`` (squeue's
    ``-o`` letters, e.g. ``"%i|%T"``), split at ``|``. ``name``: only jobs
    of that name; ``states``: only those states (``-t``); ``tasks``: array
    tasks one by one (``-r``). None when squeue fails."""
    cmd = ["squeue", "-h", "-u", getpass.getuser(), "-o", fields]
    cmd += ["-r"] if tasks else []
    cmd += ["-n", name] if name else []
    cmd += ["-t", states] if states else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    width = fields.count("|") + 1
    return [(line.split("|", width - 1) + [""] * width)[:width] for line in done.stdout.splitlines() if line]


def submit(cmd: list[str], script: str) -> str:
    """Run sbatch ``cmd`` (with ``--parsable``) on ``script``; the job's id,
    or ClusterError with sbatch's words."""
    try:
        done = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"sbatch failed: {e}") from e
    if done.returncode != 0:
        raise ClusterError(f"sbatch refused the job: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def cancel(jobid: str) -> None:
    """scancel one job of this user's; quietly, as a last resort."""
    try:
        subprocess.run(["scancel", "-u", getpass.getuser(), jobid], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


def pending(role: str, cluster: Optional[str] = None) -> list[tuple[str, str]]:
    """This user's jobs of ``role`` in ``cluster`` that wait in SLURM's queue:
    (job id, SLURM's reason), one ``squeue`` call; [] where it fails."""
    found = jobs("%i|%r", name=job_name(role, cluster), states="PENDING") or []
    return [(job, reason) for job, reason in found]


def user_limits() -> Optional[tuple[Optional[int], Optional[int]]]:
    """This user's job limits as SLURM's accounting says them: (MaxJobs,
    MaxSubmit), each None where unlimited; None where accounting says
    nothing (no sacctmgr, no association)."""
    try:
        done = subprocess.run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={getpass.getuser()}",
                               "format=MaxJobs,MaxSubmit"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split("|") for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not rows:
        return None
    running, queued = (min((int(r[i]) for r in rows if len(r) > i and r[i].isdigit()), default=None)
                       for i in (0, 1))
    return running, queued


def job_name(role: str, cluster: Optional[str] = None) -> str:
    return f"cw-{role}-{cluster_name(cluster)}"


def master_host(cluster: Optional[str] = None, wait: bool = True,
                timeout: Optional[float] = None, poll: float = 2.0) -> Optional[str]:
    """The node running this user's master job of ``cluster``.

    While the job is pending, waits (``wait=True``, up to ``timeout``) or
    returns None. With ``wait=True`` and no master job at all, raises
    ``ClusterError`` saying how to start one.
    """
    name = job_name("master", cluster)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state, node = _squeue_master(name)
        if state == "RUNNING" and node:
            return node
        if not wait:
            return None
        if state is None:
            raise ClusterError(
                f"no SLURM job {name!r} of user {getpass.getuser()} in squeue; "
                f"start the cluster with `./slurm.py start` (or `cw slurm start`)"
            )
        if deadline is not None and time.monotonic() > deadline:
            raise ClusterError(f"SLURM job {name!r} still {state} after {timeout:g} s")
        time.sleep(poll)


def _squeue_master(name: str) -> tuple[Optional[str], Optional[str]]:
    """(state, node) of the master job ``name``: the running one where one
    runs (a successor waits behind it, ``cw.succession``)."""
    found = jobs("%T|%N", name=name)
    if found is None:
        raise ClusterError("squeue failed: is SLURM's controller up? (scontrol ping)")
    found.sort(key=lambda job: job[0] != "RUNNING")
    return (found[0][0], found[0][1] or None) if found else (None, None)
