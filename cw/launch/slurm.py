"""SLURM launcher: master and workers as sbatch jobs named after the cluster.

::

    sbatch cw-master-<cluster>  ──► python -m cw.master (writes master.json)
    sbatch cw-worker-<cluster>  ──► python -m cw.worker HOST, one job per worker
                                    (a job array; with isolated=True one job over
                                    N nodes running one worker per node via srun)

Job names carry the cluster name, so one user can run several clusters side
by side; logs go to the cluster directory. Workers get ``--signal=B:TERM@N``
so SLURM warns them before their time limit and they drain. Commands come
from pure functions (``sbatch_command``, ``job_script``) that quote every
value.
"""
from __future__ import annotations

import getpass
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import squeue as queue
from .. import succession
from ..cluster import cluster_dir, cluster_name, read_json, write_json
from ..errors import ClusterError, MasterUnavailableError
from ..squeue import job_name
from . import query_status, wait_until

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$|^\d+-\d+$")


def check_time(value: str) -> str:
    """SLURM's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    if not _TIME.match(value):
        raise ClusterError(f"invalid --time {value!r}: use minutes, MM:SS, HH:MM:SS or D-HH:MM:SS")
    return value


@dataclass(frozen=True)
class Options:
    """Everything that shapes the sbatch jobs of one cluster."""

    cluster: str = "default"
    partition: Optional[str] = None
    time: Optional[str] = None
    master_time: Optional[str] = None  # the master job's own limit [default: time]
    succession: bool = True  # a successor master job waits behind the master (cw.succession)
    procs: int = 1
    gpus: Optional[int] = None  # GPUs per worker job: --gres=gpu:N (the worker finds them: --gpus auto)
    grace: float = 30.0
    isolated: bool = False
    port: int = 0  # a free port on the master's node, recorded in master.json
    insecure: bool = False
    xmaster: Sequence[str] = ()
    xworkers: Sequence[str] = ()
    docker_image: Optional[str] = None
    docker_args: str = ""
    container_engine: str = "docker"
    extra_env: dict = field(default_factory=dict)


def job_script(command: Sequence[str]) -> str:
    """The batch script: exec the command, so SLURM's signals reach it."""
    return f"#!/bin/sh\nexec {shlex.join(command)}\n"


def sbatch_command(*, job_name: str, output: str, partition: Optional[str] = None,
                   time: Optional[str] = None, array: Optional[int] = None,
                   nodes: Optional[int] = None, signal: Optional[str] = None,
                   extra: Sequence[str] = ()) -> list[str]:
    cmd = ["sbatch", "--parsable", f"--job-name={job_name}", f"--output={output}"]
    if partition:
        cmd.append(f"--partition={partition}")
    if time:
        cmd.append(f"--time={check_time(time)}")
    if array:
        cmd.append(f"--array=0-{array - 1}")
    if nodes:
        cmd += [f"--nodes={nodes}", "--ntasks-per-node=1"]
    if signal:
        cmd.append(f"--signal={signal}")
    return [*cmd, *extra]


# Passed into worker containers when set in the job, so jobs and ``--procs
# auto`` see the same SLURM facts inside as outside.
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID",
              "SLURMD_NODENAME", "SLURM_CPUS_ON_NODE", "SLURM_CPUS_PER_TASK", "SLURM_JOB_END_TIME")


def container_command(command: Sequence[str], opts: Options, cwd: str, uid: Optional[int] = None,
                      gid: Optional[int] = None, entrypoint: Optional[str] = None) -> list[str]:
    """Run ``command`` in ``opts.docker_image`` with the host's network and the
    shared filesystem at the same path, so cwd, sys.path and keys still hold,
    as the submitting user (``uid``/``gid``, default ours), so the cluster
    directory (mode 0700) is readable and files written keep their owner."""
    home = str(cluster_dir(opts.cluster).parent)
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    mounts = sorted({cwd, home})
    cmd = [opts.container_engine, "run", "--rm", "--net=host", "-w", cwd, "--user", f"{uid}:{gid}",
           "--label", f"cw.slurm.cluster={opts.cluster}",
           "-e", f"CW_HOME={home}", "-e", f"CW_CLUSTER={opts.cluster}"]
    if opts.container_engine == "podman" and uid != 0:
        cmd.append("--userns=keep-id")  # rootless podman: the same uid inside as outside
    for var in SLURM_VARS:
        cmd += ["-e", var]
    for path in mounts:
        cmd += ["-v", f"{path}:{path}"]
    cmd += ["--entrypoint", entrypoint] if entrypoint else []
    return [*cmd, *shlex.split(opts.docker_args), opts.docker_image or "", *command]


def master_command(opts: Options) -> list[str]:
    cmd = [sys.executable, "-m", "cw.master", "--cluster", opts.cluster, "--port", str(opts.port)]
    return cmd + (["--insecure"] if opts.insecure else [])


def worker_command(host: str, port: int, opts: Options, cwd: str) -> list[str]:
    # --follow: a successor master job (cw.succession) may be elsewhere by the time it starts.
    cmd = [sys.executable, "-m", "cw.worker", host, "--port", str(port), "--cluster", opts.cluster,
           "--procs", str(opts.procs), "--grace", f"{opts.grace:g}", "--follow"]
    cmd += ["--insecure"] if opts.insecure else []
    if opts.docker_image:
        # python as the entrypoint, `-m cw.worker ...` as the command: cw's image
        # (it runs what it is given) and the original's (ENTRYPOINT python) both
        # start it; a user's own --entrypoint in --docker-args is given all of it.
        own = "--entrypoint" in shlex.split(opts.docker_args)
        cmd = container_command(["python", *cmd[1:]] if own else cmd[1:], opts, cwd,
                                entrypoint=None if own else "python")
    if opts.isolated:
        cmd = ["srun", "--kill-on-bad-exit=0", *cmd]
    return cmd


def sbatch_job(opts: Options, worker: list[str], n: int, logs: Path) -> str:
    """Submit ``n`` workers running ``worker`` (one job array, or one job over
    ``n`` nodes with ``isolated``); return the job's id."""
    cmd = sbatch_command(
        job_name=job_name("worker", opts.cluster), output=str(logs / "worker-%A_%a.log"),
        partition=opts.partition, time=opts.time, array=None if opts.isolated else n,
        nodes=n if opts.isolated else None, signal=f"B:TERM@{int(opts.grace) + 15}",
        extra=[*([f"--gres=gpu:{opts.gpus}"] if opts.gpus else []), *opts.xworkers])
    return queue.submit(cmd, job_script(worker))


def start(nworkers: int = 1, *, master: bool = True, workers: bool = True,
          cluster: Optional[str] = None, timeout: float = 300.0, adapt: Optional[tuple[int, int]] = None,
          idle_timeout: float = 300.0, adapt_interval: float = 20.0, adapt_pending: int = 4,
          adapt_failures: int = 3, **options) -> dict:
    """Submit the master and ``nworkers`` workers; return once they answer.
    With ``adapt=(MIN, MAX)``, no workers: a scaler beside the master submits
    and lets them go as the queue needs (``cw.launch.scaler``)."""
    opts = Options(cluster=cluster_name(cluster), **options)
    cdir = cluster_dir(opts.cluster, create=True)
    logs = cdir / "logs"
    jobs: list[str] = []
    if adapt is not None:
        workers = False
        _adapt_config(cdir, opts, adapt, idle_timeout=idle_timeout, interval=adapt_interval,
                      max_pending=adapt_pending, max_failures=adapt_failures)
    if master:
        jobid = _submit_master(opts, cdir, adapt is not None)
        jobs.append(jobid)
        info = wait_until(lambda: _master_of_job(opts.cluster, jobid), timeout, poll=0.5)
        if info is None:
            raise ClusterError(f"master job {jobid} did not start within {timeout:g} s "
                               f"(squeue -j {jobid}; log in {logs})")
        query_status(info["host"], info["port"], timeout=timeout, cluster=opts.cluster,
                     insecure=opts.insecure)
    else:
        info = read_json(cluster_dir(opts.cluster) / "master.json")
        if info is None:
            raise ClusterError(f"no master.json for cluster {opts.cluster!r}; start a master or drop -M")
    registered = 0
    if workers and nworkers:
        before = _ready_workers(_snapshot(info, opts), opts)
        worker = worker_command(info["host"], info["port"], opts, os.getcwd())
        jobs.append(sbatch_job(opts, worker, nworkers, logs))
        snap = wait_until(lambda: _workers_at_least(info, opts, before + nworkers), timeout, poll=0.5)
        registered = _ready_workers(snap or _snapshot(info, opts), opts) - before
    return {"cluster": opts.cluster, "host": info["host"], "port": info["port"], "jobs": jobs,
            "registered": registered, "worker_pids": []}


def _submit_master(opts: Options, cdir: Path, scaler: bool) -> str:
    """Submit the master's job; with succession, record how, for it to
    submit its successor (``cw.succession``)."""
    log = str(cdir / "logs" / "master-%j.log")
    cmd = sbatch_command(job_name=job_name("master", opts.cluster), output=log,
                         partition=opts.partition, time=opts.master_time or opts.time,
                         extra=[*(["--requeue"] if opts.succession else []), *opts.xmaster])
    script = _master_script(opts, scaler)
    if opts.succession:  # before the master starts: it submits its successor at once
        succession.configure(cdir, cmd, script)
    else:
        succession.end(cdir)
    return queue.submit(cmd, script)


def _master_script(opts: Options, scaler: bool) -> str:
    """The master's batch script; with ``scaler``, the scaler starts beside it,
    in its job, and ends with it (``cw.launch.scaler``)."""
    script = job_script(master_command(opts))
    if scaler:
        command = shlex.join([sys.executable, "-m", "cw.launch.scaler", "--cluster", opts.cluster])
        script = script.replace("\nexec ", f"\n{command} &\nexec ", 1)
    return script


def _adapt_config(cdir: Path, opts: Options, bounds: tuple[int, int], *, idle_timeout: float,
                  interval: float, max_pending: int, max_failures: int) -> None:
    """``adapt.json``: what the scaler needs to submit workers like ours."""
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2
            and all(type(b) is int for b in bounds)):
        raise ClusterError(f"invalid adapt={bounds!r}: give (MIN, MAX), two whole numbers")
    lo, hi = bounds
    if not 0 <= lo <= hi or hi < 1:
        raise ClusterError(f"invalid --adapt {lo}:{hi}: use MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
    if opts.isolated:
        raise ClusterError("--adapt submits job arrays: it does not go with --isolated")
    options = {"partition": opts.partition, "time": opts.time, "procs": opts.procs, "gpus": opts.gpus,
               "grace": opts.grace,
               "insecure": opts.insecure, "xworkers": list(opts.xworkers), "docker_image": opts.docker_image,
               "docker_args": opts.docker_args, "container_engine": opts.container_engine}
    write_json(cdir / "adapt.json", {
        "min": lo, "max": hi, "idle_timeout": idle_timeout, "interval": interval, "max_pending": max_pending,
        "max_failures": max_failures, "cwd": os.getcwd(), "procs": opts.procs, "insecure": opts.insecure,
        "options": options})


def _master_of_job(name: str, jobid: str) -> Optional[dict]:
    info = read_json(cluster_dir(name) / "master.json")
    return info if info and str(info.get("slurm_job")) == jobid else None


def _snapshot(info: dict, opts: Options) -> dict:
    return query_status(info["host"], info["port"], cluster=opts.cluster, insecure=opts.insecure)


def _workers_at_least(info: dict, opts: Options, n: int) -> Optional[dict]:
    try:
        snap = _snapshot(info, opts)
    except MasterUnavailableError:
        return None
    return snap if _ready_workers(snap, opts) >= n else None


def _ready_workers(snap: dict, opts: Options) -> int:
    """Workers whose executors have all registered too: they can take jobs."""
    return sum(1 for w in snap["workers"] if w["executors"] >= opts.procs)


def squeue(cluster: Optional[str] = None) -> list[dict]:
    """This user's jobs of this cluster: id, name, state, nodes."""
    name = cluster_name(cluster)
    found = queue.jobs("%i|%j|%T|%N")
    if found is None:
        raise ClusterError("squeue failed: is SLURM's controller up? (scontrol ping)")
    ours = (job_name("master", name), job_name("worker", name))
    return [{"id": jobid, "name": jname, "state": state, "nodes": nodes}
            for jobid, jname, state, nodes in found if jname in ours]


def stop(cluster: Optional[str] = None, timeout: float = 90.0, *, master: bool = True,
         workers: bool = True) -> int:
    """Drain and end this cluster's workers, then its master (or only one of
    them); return jobs ended."""
    name = cluster_name(cluster)
    ended = 0
    if master:  # the scaler stops first: it would submit workers as these drain;
        (cluster_dir(name) / "adapt.json").unlink(missing_ok=True)
        succession.end(cluster_dir(name))  # and no master submits a successor
    for role in [r for r, wanted in (("worker", workers), ("master", master)) if wanted]:
        jname = job_name(role, name)
        mine = [j for j in squeue(name) if j["name"] == jname]
        if not mine:
            continue
        ended += len({j["id"].split("_")[0] for j in mine})
        if any(j["state"] == "PENDING" for j in mine):  # no signal reaches them, nor need it
            _scancel(["--state=PENDING", "-n", jname])
        # SIGTERM first: workers drain and hand back their jobs, the master
        # removes master.json; only what outlives that is cancelled outright.
        _scancel(["--signal=TERM", "--full", "-n", jname])
        if wait_until(_gone(name, jname, role == "master"), timeout, poll=0.5) is None:
            _scancel(["-n", jname])
    if master:  # a successor its master submitted as stop began
        _scancel(["-n", job_name("master", name)])
    if master and workers:  # what a scaler's last turn may have submitted as the master went
        _scancel(["-n", job_name("worker", name)])
    return ended


def _gone(cluster: str, jname: str, successors: bool = False) -> Callable[[], Optional[dict]]:
    """A check for wait_until: no job ``jname`` left; ``successors``: cancel
    any that waits (a master submitted it as stop began)."""
    def check() -> Optional[dict]:
        mine = [j for j in squeue(cluster) if j["name"] == jname]
        if successors and any(j["state"] == "PENDING" for j in mine):
            _scancel(["--state=PENDING", "-n", jname])
        return None if mine else {}
    return check


def _scancel(args: list[str]) -> None:
    subprocess.run(["scancel", "-u", getpass.getuser(), *args], capture_output=True, timeout=60)


def status(cluster: Optional[str] = None) -> dict:
    """SLURM's view (jobs, nodes) and the master's (workers, queue)."""
    name = cluster_name(cluster)
    out: dict = {"cluster": name, "jobs": squeue(name)}
    if (cluster_dir(name) / "adapt.json").exists():
        out["adapt"] = read_json(cluster_dir(name) / "adapt-state.json")
    info = read_json(cluster_dir(name) / "master.json")
    if info is not None:
        try:
            out["master"] = query_status(info["host"], info["port"], timeout=5, cluster=name,
                                         insecure=not info.get("secure", True))
        except (MasterUnavailableError, ClusterError) as e:
            out["master_error"] = str(e)
    return out
