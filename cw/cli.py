"""The ``cw`` command: one click group; ``python -m cw.master``/``cw.worker`` and
the top-level ``mp.py`` are the same commands under other names.

Here: the group, ``master``, ``worker``, ``status``, ``logs`` and ``keys``;
the launchers' groups are in ``cli_launch``, shared options in ``cli_common``.
Processes configure logging where they start (here, and in ``cw.executor``);
the library itself only logs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import click

from .cli_common import (
    cluster_option,
    friendly,
    insecure_option,
)
from .cli_launch import docker_group, local_group, mp_command, slurm_command, slurm_group, ssh_group
from .cli_run import map_command as map_cli
from .cli_run import run_command as run_cli
from .master.command import master_command
from .worker.command import worker_command

__all__ = ["main", "master_command", "worker_command", "mp_command", "slurm_command"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cw", message="cw %(version)s")
def main() -> None:
    """cw: run many Python function calls on a cluster of workers."""


for _group in (local_group, slurm_group, ssh_group, docker_group):
    main.add_command(_group)


main.add_command(master_command)
main.add_command(worker_command)
main.add_command(run_cli)
main.add_command(map_cli)


def _known_cluster(cluster: Optional[str]) -> None:
    """A cluster name nothing here knows is the user's typo: say so, and
    make no directory or keys for it (unless CW_MASTER_ADDRESS says where)."""
    from .cluster import cluster_dir, cluster_name, home

    if os.environ.get("CW_MASTER_ADDRESS") or cluster_dir(cluster).is_dir():
        return
    known = sorted(p.name for p in home().iterdir() if (p / "keys").is_dir()) if home().is_dir() else []
    raise click.ClickException(f"no cluster {cluster_name(cluster)!r} here ({cluster_dir(cluster)} does not "
                               f"exist); clusters here: {', '.join(known) or 'none'}; start one with "
                               f"`cw local start` or `./mp.py start`")


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON snapshot (as /api/status serves it).")
@click.option("--why", is_flag=True, help="Say why queued jobs do not run, instead of the table.")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="Seconds to wait for the master's answer.")
@cluster_option
@insecure_option
@friendly
def status_command(as_json: bool, why: bool, watch: bool, interval: float, timeout: float,
                   cluster: Optional[str], insecure: bool) -> None:
    """Show the master, its workers, clients, queue and throughput."""
    from .discovery import find_master
    from .errors import MasterUnavailableError
    from .launch import query_status
    from .view import render

    _known_cluster(cluster)
    host, port = find_master(None, None, cluster)

    def show() -> str:
        snap = query_status(host, port, timeout, cluster=cluster, insecure=insecure)
        if why:
            return "\n".join(_why(snap, cluster))
        adapt = _adapt_state(cluster)
        if adapt:
            snap["adapt"] = adapt
        return json.dumps(snap, indent=2) if as_json else render(snap, f"{host}:{port}")

    if not watch:
        try:
            click.echo(show())
        except MasterUnavailableError as e:
            raise click.ClickException(f"{e}; is the master running? (`cw local start`, or --cluster "
                                       "NAME / CW_MASTER_ADDRESS to look elsewhere)") from e
        return
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                text = show()
            except MasterUnavailableError as e:
                text = f"{e} (retrying every {interval:g} s)"
            # Home and clear-to-end redraw in place on a terminal; elsewhere, one frame after another.
            click.echo(f"\x1b[H\x1b[J{text}" if tty else f"{text}\n")
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


def _adapt_state(cluster: Optional[str]) -> Optional[dict]:
    """What the cluster's scaler (`slurm.py start --adapt`) last did, if it has one."""
    from .cluster import cluster_dir, read_json
    from .errors import CWError

    try:
        cdir = cluster_dir(cluster)
    except CWError:
        return None
    return read_json(cdir / "adapt-state.json") if (cdir / "adapt.json").exists() else None


def _why(snap: dict, cluster: Optional[str]) -> list[str]:
    from . import squeue
    from .launch.doctor import why

    waiting = squeue.pending("worker", cluster) if snap["totals"]["queued"] and squeue.available() else None
    return why(snap, waiting)


@main.command("doctor")
@cluster_option
@friendly
def doctor_command(cluster: Optional[str]) -> None:
    """Check what most often stops jobs: the cluster directory, keys, where
    the master is and whether it answers, workers' Python and cloudpickle
    against this client's, ports, and on SLURM the shared filesystem, your
    job limits and worker jobs waiting. One line per finding; exit status 1
    if any is a PROBLEM."""
    from . import squeue
    from .launch import query_status
    from .launch.doctor import PROBLEM, doctor

    slurm = squeue.available()
    found = doctor(cluster, query_status, slurm)
    if slurm:
        limits = squeue.user_limits()
        found.append(("note", "SLURM's accounting (sacctmgr) says no job limits of yours" if limits is None
                      else "SLURM lets you run {} running and {} queued jobs".format(
                          *("any number of" if n is None else f"at most {n}" for n in limits))))
        found += [("note", f"worker job {job} waits in SLURM's queue: {reason}")
                  for job, reason in squeue.pending("worker", cluster)]
    for level, text in found:
        click.echo(f"{level:<8}{text}")
    if any(level == PROBLEM for level, _ in found):
        sys.exit(1)


@main.command("logs")
@click.argument("worker", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@click.option("-n", "--lines", type=click.IntRange(0), default=None,
              help="Only the last N lines [default: all].")
@cluster_option
@friendly
def logs_command(worker: Optional[str], follow: bool, lines: Optional[int], cluster: Optional[str]) -> None:
    """Show the cluster's logs in time order, or one process's: WORKER is 'master',
    a host, a pid or HOST:PID. Jobs' prints are there, tagged 'job ID stdout:'."""
    from .cluster import cluster_dir
    from .logfiles import follow as follow_logs
    from .logfiles import logs_dir, merged, select

    logs = logs_dir(cluster_dir(cluster))
    files = select(logs, worker)
    if not files and not follow:
        what = f" matching {worker!r}" if worker else ""
        raise click.ClickException(f"no log files{what} in {logs}; another cluster (--cluster, "
                                   f"CW_HOME)? `ls {logs}` lists what there is")
    for line in merged(files, lines):
        click.echo(line)
    if follow:
        try:
            follow_logs(logs, worker, click.echo)
        except KeyboardInterrupt:
            pass


# -- keys ------------------------------------------------------------------------
@main.group("keys")
def keys_group() -> None:
    """Admit, list and remove the public keys the master accepts."""


def _authorized(cluster: Optional[str]):
    from .cluster import cluster_dir
    from .security import ensure_keys

    return ensure_keys(cluster_dir(cluster, create=True)) / "authorized"


@keys_group.command("list")
@cluster_option
@friendly
def keys_list(cluster: Optional[str]) -> None:
    """List the admitted keys: NAME and public key."""
    from .security import load_public

    for path in sorted(_authorized(cluster).glob("*.key")):
        click.echo(f"{path.stem}\t{load_public(path).decode()}")


@keys_group.command("add")
@click.argument("name")
@click.argument("keyfile", type=click.Path(exists=True, dir_okay=False))
@cluster_option
@friendly
def keys_add(name: str, keyfile: str, cluster: Optional[str]) -> None:
    """Admit the public key in KEYFILE (a client.key) under NAME."""
    import shutil
    from pathlib import Path

    from .cluster import check_name
    from .security import load_public

    check_name(name, "key")
    load_public(Path(keyfile))  # refuse what is not a key file
    target = _authorized(cluster) / f"{name}.key"
    if target.exists():
        raise click.ClickException(f"a key named {name!r} is already admitted; remove it first")
    shutil.copy(keyfile, target)
    os.chmod(target, 0o644)
    click.echo(f"admitted {name}; a running master picks it up within a second")


@keys_group.command("remove")
@click.argument("name")
@cluster_option
@friendly
def keys_remove(name: str, cluster: Optional[str]) -> None:
    """Stop admitting the key NAME (running connections keep going until they reconnect)."""
    from .cluster import check_name

    target = _authorized(cluster) / f"{check_name(name, 'key')}.key"
    if not target.exists():
        names = ", ".join(sorted(p.stem for p in target.parent.glob("*.key"))) or "none"
        raise click.ClickException(f"no admitted key named {name!r}; admitted: {names}")
    target.unlink()
    click.echo(f"removed {name}")


@keys_group.command("show")
@cluster_option
@friendly
def keys_show(cluster: Optional[str]) -> None:
    """Print the path of this user's public client key, to send to a cluster's owner."""
    click.echo(str(_authorized(cluster).parent / "client.key"))



if __name__ == "__main__":
    sys.exit(main())
