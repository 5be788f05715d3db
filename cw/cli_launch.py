"""``cw local|slurm|ssh|docker start|stop|status`` and the top-level scripts
``mp.py`` and ``slurm.py``: each launcher's options and how its report is printed."""
from __future__ import annotations

import copy
import json
from typing import Any, Callable, Optional

import click

from .cli_common import PORT, Procs, apply_options, cluster_option, friendly, insecure_option
from .errors import CWError
from .protocol import DEFAULT_PORT
from .view import adapt_line, duration, resources_line

# Options every launcher's start shares.
start_which = [
    click.option("-M", "--no-master", is_flag=True,
                 help="Do not start a master (use the running one); with stop, leave it running."),
    click.option("-W", "--no-workers", is_flag=True,
                 help="Do not start workers; with stop, leave them running."),
]
# What stop and status take of a launcher's options (start takes them all).
ACTION_OPTIONS = {"stop": {"no_master", "no_workers", "cluster", "container_engine"},
                  "status": {"cluster", "insecure", "container_engine"}}


def up_timeout(default: float) -> Callable:
    return click.option("--timeout", type=click.FloatRange(1), default=default, show_default=True,
                        help="Seconds to wait for the master and workers to come up.")


# -- local clusters -------------------------------------------------------------
local_options = [
    click.option("-n", "--nworkers", type=click.IntRange(0), default=1, show_default=True,
                 help="Worker processes to start."),
    *start_which,
    click.option("--procs-per-worker", type=Procs(), default="1", show_default=True,
                 help="Executor processes per worker; 'auto' = CPUs."),
    click.option("--host", default="127.0.0.1", show_default=True, help="Address the master binds."),
    click.option("--port", type=PORT, envvar="CW_PORT", default=0, show_default=True,
                 help="Master port; 0 picks a free one, which clients find in the cluster's master.json."),
    up_timeout(60.0),
    cluster_option,
    insecure_option,
]


def _local(action: str, nworkers: int, no_master: bool, no_workers: bool, procs_per_worker: int,
           host: str, port: int, timeout: float, cluster: Optional[str], insecure: bool) -> None:
    from .launch import local

    if action == "start":
        info = local.start(nworkers, master=not no_master, workers=not no_workers, cluster=cluster,
                           host=host, port=port, procs=procs_per_worker, timeout=timeout,
                           insecure=insecure)
        dashboard = f"; dashboard {info['http']}" if info.get("http") else ""
        click.echo(f"cluster {info['cluster']}: master at {info['host']}:{info['port']}, "
                   f"{len(info['worker_pids'])} worker(s) started{dashboard}")
    elif action == "stop":
        n = local.stop(cluster, master=not no_master, workers=not no_workers)
        click.echo(f"stopped {n} process(es)")
    else:
        click.echo(json.dumps(local.status(cluster, insecure), indent=2))


ACTIONS = {"start": "Start", "stop": "Stop", "status": "Show"}


def _launcher_commands(group: click.Group, script: str, options: list, run: Callable[..., None],
                       what: str, script_workers: Optional[int] = None) -> click.Command:
    """``cw <group> start|stop|status`` (stop and status with only the options
    they use) and the top-level script taking ACTION (every option; its
    ``-n`` defaulting to ``script_workers``, the original's), all over
    ``run(action, **options)``; returns the script's command."""
    params = click.command()(apply_options(options)(lambda **kw: None)).params
    defaults = {p.name: p.default for p in params}

    def runner(action: Optional[str] = None) -> Callable[..., None]:
        def command(**kwargs: Any) -> None:
            chosen = kwargs.pop("action", action)
            run(chosen, **{**defaults, **kwargs})
        return friendly(command)

    for action, verb in ACTIONS.items():
        keep = ACTION_OPTIONS.get(action)
        group.add_command(click.Command(
            action, params=[p for p in params if keep is None or p.name in keep],
            callback=runner(action), help=f"{verb} {what}."))
    script_params = [copy.copy(p) for p in params]
    for p in script_params:
        if p.name == "nworkers" and script_workers is not None:
            p.default = script_workers
    return click.Command(
        script, params=[click.Argument(["action"], type=click.Choice(list(ACTIONS))), *script_params],
        callback=runner(), context_settings={"help_option_names": ["-h", "--help"]},
        help=f"Start, stop or show {what} (ACTION: {'|'.join(ACTIONS)}).")


@click.group("local")
def local_group() -> None:
    """Start and stop a cluster of processes on this machine."""


mp_command = _launcher_commands(local_group, "mp.py", local_options, _local,
                                "a cluster of local processes", script_workers=8)


# -- SLURM -----------------------------------------------------------------------
def _slurm_time(ctx: Any, param: Any, value: Optional[str]) -> Optional[str]:
    from .launch.slurm import check_time

    try:
        return None if value is None else check_time(value)
    except CWError as e:
        raise click.BadParameter(str(e).split(": ", 1)[-1]) from e


def _adapt(ctx: Any, param: Any, value: Optional[str]) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    lo, _, hi = value.partition(":")
    if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi) or int(hi) < 1:
        raise click.BadParameter(f"{value!r}: use MIN:MAX, whole numbers, 0 <= MIN <= MAX, MAX >= 1")
    return int(lo), int(hi)


adapt_options = [
    click.option("--adapt", default=None, metavar="MIN:MAX", callback=_adapt,
                 help="No fixed workers: a scaler beside the master submits between MIN and MAX "
                      "as jobs queue, and lets idle ones go."),
    click.option("--idle-timeout", type=click.FloatRange(1), default=300.0, show_default=True,
                 help="With --adapt: seconds a worker beyond MIN stays without a job."),
    click.option("--adapt-interval", type=click.FloatRange(1), default=20.0, show_default=True,
                 help="With --adapt: seconds between looks (one squeue, at most one sbatch each)."),
    click.option("--adapt-pending", type=click.IntRange(1), default=4, show_default=True,
                 help="With --adapt: most worker jobs waiting in SLURM's queue at once."),
    click.option("--adapt-failures", type=click.IntRange(1), default=3, show_default=True,
                 help="With --adapt: failed sbatch calls in a row after which scaling stops."),
]


engine_option = click.option(
    "--container-engine", type=click.Choice(["docker", "podman"]), envvar="CW_CONTAINER_ENGINE",
    default="docker", show_default=True, help="Container engine.")
slurm_options = [
    click.option("-n", "--nworkers", type=click.IntRange(0), default=1, show_default=True,
                 help="Workers to start (sbatch jobs, or nodes with -i)."),
    *start_which,
    click.option("-d", "--docker-image", default=None, help="Run the workers in this container image."),
    click.option("--docker-args", default="", help="Extra arguments for `docker run` (one string)."),
    engine_option,
    click.option("-i", "--isolated", is_flag=True, help="One worker per node (one job over N nodes)."),
    click.option("--Xworkers", "xworkers", multiple=True, metavar="ARG",
                 help="Pass ARG to sbatch for the workers (repeatable)."),
    click.option("--Xmaster", "xmaster", multiple=True, metavar="ARG",
                 help="Pass ARG to sbatch for the master (repeatable)."),
    click.option("--partition", default=None, help="SLURM partition."),
    click.option("--time", "time_limit", default=None, callback=_slurm_time,
                 help="SLURM time limit of each job, e.g. 2:00:00 or 1-00:00:00."),
    click.option("--master-time", default=None, callback=_slurm_time,
                 help="The master job's own time limit [default: --time]; with succession, "
                      "the cluster outlives it."),
    click.option("--succession/--no-succession", default=True, show_default=True,
                 help="A successor master job waits in the queue behind the master and takes over "
                      "when it ends (time limit, node failure); clients and workers follow it."),
    click.option("--procs-per-worker", type=Procs(), default="1", show_default=True,
                 help="Executor processes per worker; 'auto' = the CPUs SLURM gave it."),
    click.option("--gpus-per-worker", type=click.IntRange(1), default=None,
                 help="GPUs for each worker job (sbatch --gres=gpu:N); jobs ask for them with "
                      "resources={'gpus': N}."),
    click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
                 help="Seconds a worker may finish its job when SLURM warns it (time limit, scancel)."),
    click.option("--port", type=PORT, envvar="CW_PORT", default=0, show_default=True,
                 help="Master port on its node; 0 picks a free one (recorded in master.json)."),
    up_timeout(300.0),
    *adapt_options,
    cluster_option,
    insecure_option,
]


def _slurm(action: str, nworkers: int, no_master: bool, no_workers: bool, docker_image: Optional[str],
           docker_args: str, container_engine: str, isolated: bool, xworkers: tuple, xmaster: tuple,
           partition: Optional[str], time_limit: Optional[str], master_time: Optional[str],
           succession: bool, procs_per_worker: int, gpus_per_worker: Optional[int], grace: float,
           port: int, timeout: float, adapt: Optional[tuple[int, int]], idle_timeout: float,
           adapt_interval: float, adapt_pending: int, adapt_failures: int, cluster: Optional[str],
           insecure: bool) -> None:
    from .launch import slurm as launcher
    from .squeue import available

    if not available():
        raise click.ClickException("SLURM is not available here: no sbatch on PATH, or its "
                                   "controller does not answer `scontrol ping`")
    if action == "start":
        info = launcher.start(
            nworkers, master=not no_master, workers=not no_workers, cluster=cluster, timeout=timeout,
            partition=partition, time=time_limit, master_time=master_time, succession=succession,
            procs=procs_per_worker, gpus=gpus_per_worker, grace=grace, isolated=isolated,
            port=port, insecure=insecure, xmaster=xmaster, xworkers=xworkers, docker_image=docker_image,
            docker_args=docker_args, container_engine=container_engine, adapt=adapt,
            idle_timeout=idle_timeout, adapt_interval=adapt_interval, adapt_pending=adapt_pending,
            adapt_failures=adapt_failures)
        click.echo(f"cluster {info['cluster']}: master at {info['host']}:{info['port']}; "
                   f"jobs {' '.join(info['jobs']) or '-'}; {info['registered']} worker(s) registered"
                   + (f"; workers follow the queue, {adapt[0]} to {adapt[1]}" if adapt else ""))
        wanted = 0 if no_workers or adapt else nworkers
        if info["registered"] < wanted:
            click.echo(f"warning: only {info['registered']} of {wanted} workers registered within "
                       f"{timeout:g} s; the rest may still be pending (squeue)", err=True)
    elif action == "stop":
        click.echo(f"stopped {launcher.stop(cluster, master=not no_master, workers=not no_workers)} job(s)")
    else:
        _print_slurm_status(launcher.status(cluster))


def _print_slurm_status(st: dict) -> None:
    click.echo(f"cluster {st['cluster']}")
    for job in st["jobs"]:
        click.echo(f"  {job['id']:>10}  {job['name']:<28} {job['state']:<10} {job['nodes']}")
    if not st["jobs"]:
        click.echo("  no jobs in squeue")
    if st.get("adapt"):
        click.echo(f"  {adapt_line(st['adapt'])}")
    _echo_master(st, each_worker=True)


def _echo_master(st: dict, each_worker: bool = False) -> None:
    """A launcher status's last lines: what its master sees, or why it did not answer."""
    snap = st.get("master")
    if snap:
        click.echo(f"  workers registered: {len(snap['workers'])}  executors: {len(snap['executors'])}  "
                   f"queued: {snap['queued']}  running: {snap['running']}")
        for w in snap["workers"] if each_worker else ():
            left = "" if w.get("left") is None else f", {duration(w['left'])} left before its time limit"
            res = resources_line(w.get("resources"))
            click.echo(f"    worker {w['host']} pid {w['pid']}: {w['executors']} executor(s){left}"
                       + (f"; {res}" if res else ""))
    elif "master_error" in st:
        click.echo(f"  master: {st['master_error']}")


@click.group("slurm")
def slurm_group() -> None:
    """Start, stop and show a cw cluster of SLURM jobs."""


slurm_command = _launcher_commands(slurm_group, "slurm.py", slurm_options, _slurm,
                                   "a cw cluster of SLURM jobs", script_workers=32)


# -- SSH -------------------------------------------------------------------------
@click.group("ssh")
def ssh_group() -> None:
    """Start, stop and show a cw cluster over machines reached by SSH."""


@ssh_group.command("start")
@click.argument("machines_csv", metavar="CLUSTER.csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--master-address", envvar="CW_MASTER_ADDRESS", default=None,
              help="Address the workers use to reach the master (it listens there) "
                   "[default: this machine's address on the route to the first machine].")
@click.option("--port", type=PORT, envvar="CW_PORT", default=DEFAULT_PORT, show_default=True,
              help="Master port; 0 picks a free one.")
@click.option("--no-local-workers", is_flag=True, help="Run no worker on this machine.")
@click.option("--cpu-limit", type=click.IntRange(1), default=None,
              help="Executors of the local worker [default: all CPUs].")
@click.option("--python", default=None,
              help="Python on the machines [default: this one's path, the shared-filesystem model].")
@click.option("--ssh-option", "ssh_options", multiple=True, metavar="KEY=VALUE",
              help="Pass `-o KEY=VALUE` to ssh (repeatable), e.g. UserKnownHostsFile=FILE.")
@click.option("--connect-timeout", type=click.IntRange(1, 600), default=10, show_default=True,
              help="Seconds ssh may take to connect to a machine.")
@click.option("--master-timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds a remote worker outlives a silent master (no orphans if this machine goes).")
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds to wait for the master and the workers to come up.")
@cluster_option
@insecure_option
@friendly
def ssh_start(machines_csv: str, master_address: Optional[str], port: int, no_local_workers: bool,
              cpu_limit: Optional[int], python: Optional[str], ssh_options: tuple,
              connect_timeout: int, master_timeout: float, timeout: float, cluster: Optional[str],
              insecure: bool) -> None:
    """Start a master here and a worker on each machine of CLUSTER.csv.

    One row per machine: address, ssh_user, ssh_port, local_ssh_file, cpu_limit
    (blank: current user, port 22, ssh's default key, all CPUs); `#` starts a comment.
    """
    from .launch import ssh

    report = ssh.start(machines_csv, cluster=cluster, master_address=master_address, port=port,
                       local_workers=not no_local_workers, cpu_limit=cpu_limit, python=python,
                       ssh_options=ssh_options, connect_timeout=connect_timeout,
                       master_timeout=master_timeout, timeout=timeout, insecure=insecure)
    lines, failed = ssh.start_report(report)
    click.echo("\n".join(lines))
    if failed:
        raise click.ClickException(
            f"{failed} of {len(report['machines'])} machine(s) failed (above); the rest of the cluster "
            "is running: fix those rows, then `cw ssh stop` and start again, or go on without them")


@ssh_group.command("stop")
@click.option("--timeout", type=click.FloatRange(1), default=60.0, show_default=True,
              help="Seconds a worker may take to drain before it is killed.")
@cluster_option
@friendly
def ssh_stop(timeout: float, cluster: Optional[str]) -> None:
    """Stop the workers on every machine, then the master and the local worker."""
    from .launch import ssh

    report = ssh.stop(cluster, timeout=timeout)
    lines, failed = ssh.stop_report(report)
    click.echo("\n".join(lines))
    if failed:
        raise click.ClickException(
            f"could not reach {', '.join(failed)}: workers there exit by themselves once the master has "
            "been gone --master-timeout seconds; run `cw ssh stop` again to remove what is left there")


@ssh_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@cluster_option
@insecure_option
@friendly
def ssh_status(as_json: bool, cluster: Optional[str], insecure: bool) -> None:
    """Show each machine's workers and what the master sees."""
    from .launch import ssh

    st = ssh.status(cluster, insecure=insecure)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo("\n".join(ssh.status_report(st)))


# -- containers ------------------------------------------------------------------
docker_options = [
    click.option("-n", "--nworkers", type=click.IntRange(0), default=1, show_default=True,
                 help="Worker containers to start."),
    *start_which,
    click.option("--image", envvar="CW_IMAGE", default=None,
                 help="The cw image (docker build -f docker/Dockerfile -t cw .)."),
    click.option("--container-engine", type=click.Choice(["docker", "podman"]), envvar="CW_CONTAINER_ENGINE",
                 default=None, help="Container engine [default: the one that started the cluster, "
                                    "else docker]."),
    click.option("--docker-args", default="", help="Extra arguments for `docker run` (one string)."),
    click.option("--network", default="host", show_default=True,
                 help="'host', or a network of the engine's: then only the master's port is published."),
    click.option("--procs-per-worker", type=Procs(), default="1", show_default=True,
                 help="Executor processes per worker container; 'auto' = CPUs."),
    click.option("--port", type=PORT, envvar="CW_PORT", default=DEFAULT_PORT, show_default=True,
                 help="Master port; 0 picks a free one (host network only)."),
    up_timeout(120.0),
    cluster_option,
    insecure_option,
]


def _docker(action: str, nworkers: int, no_master: bool, no_workers: bool, image: Optional[str],
            container_engine: Optional[str], docker_args: str, network: str, procs_per_worker: int, port: int,
            timeout: float, cluster: Optional[str], insecure: bool) -> None:
    from .launch import docker

    if action == "start":
        info = docker.start(nworkers, master=not no_master, workers=not no_workers, cluster=cluster,
                            image=image, engine=container_engine, port=port, procs=procs_per_worker,
                            network=network, args=docker_args, insecure=insecure, timeout=timeout)
        click.echo(f"cluster {info['cluster']}: master at {info['host']}:{info['port']}; "
                   f"started {' '.join(info['containers']) or 'no container'}")
    elif action == "stop":
        n = docker.stop(cluster, container_engine, master=not no_master, workers=not no_workers)
        click.echo(f"stopped {n} container(s)")
    else:
        st = docker.status(cluster, container_engine, insecure)
        click.echo(f"cluster {st['cluster']}")
        for c in st["containers"]:
            click.echo(f"  {c['name']:<40} {c['role']:<8} {c['state']}")
        _echo_master(st)


@click.group("docker")
def docker_group() -> None:
    """Start, stop and show a cw cluster of Docker/Podman containers on this machine."""


_launcher_commands(docker_group, "docker", docker_options, _docker, "a cw cluster of containers")
