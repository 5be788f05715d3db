"""The ``cw`` command: one click group; ``python -m cw.master``/``cw.worker`` and
the top-level ``mp.py`` are the same commands under other names.

Here: the group, ``master``, ``worker``, ``status``, ``logs`` and ``keys``;
the launchers' groups are in ``cli_launch``, shared options in ``cli_common``.
Processes configure logging where they start (here, and in ``cw.executor``);
the library itself only logs.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

import click

from .cli_common import (
    PORT,
    SIZE,
    Procs,
    apply_options,
    cluster_option,
    friendly,
    heartbeat_options,
    insecure_option,
    log_option,
)
from .cli_launch import docker_group, local_group, mp_command, slurm_command, slurm_group, ssh_group
from .logfiles import setup_logging
from .protocol import DEFAULT_PORT, PROTOCOL_VERSION

__all__ = ["main", "master_command", "worker_command", "mp_command", "slurm_command"]


def _log_file(cluster: Optional[str], role: str) -> Optional[Path]:
    from .cluster import cluster_dir
    from .logfiles import log_path, logs_dir, stderr_in

    try:
        logs = logs_dir(cluster_dir(cluster, create=True))
        if stderr_in(logs):
            # A launcher (local, SLURM, the container entrypoint) keeps our
            # stderr as this process's log already: one file, not two.
            return None
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        return log_path(logs, role)
    except OSError:
        return None  # no writable cluster directory here: stderr only


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cw", message="cw %(version)s")
def main() -> None:
    """cw: run many Python function calls on a cluster of workers."""


for _group in (local_group, slurm_group, ssh_group, docker_group):
    main.add_command(_group)


@main.command("master")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--port", type=PORT, envvar="CW_PORT", default=DEFAULT_PORT, show_default=True,
              help="Port to bind; 0 picks a free one (recorded in master.json).")
@cluster_option
@insecure_option
@click.option("--max-message-size", type=SIZE, default=1 << 30, show_default=True,
              help="Largest message in bytes; bigger ones are dropped.")
@click.option("--max-jobs-per-client", type=SIZE, default=1_000_000, show_default=True,
              help="Unfinished jobs the master holds for one client.")
@click.option("--max-bytes-per-client", type=SIZE, default=4 << 30, show_default=True,
              help="Payload bytes the master holds for one client.")
@click.option("--http-port", type=PORT, envvar="CW_HTTP_PORT", default=None,
              help="Serve the live dashboard and /api/status on this port (0 = a free one) "
                   "[default: off].")
@click.option("--http-host", envvar="CW_HTTP_HOST", default="127.0.0.1", show_default=True,
              help="Address the dashboard binds; reach it from elsewhere through an SSH tunnel.")
@click.option("--spin", type=click.FloatRange(0, 0.1), envvar="CW_MASTER_SPIN", default=0.0005,
              show_default=True, metavar="SECONDS",
              help="After receiving jobs or results, while none is queued, poll this long "
                   "before sleeping: quicker round trips for one job at a time, for some "
                   "CPU; 0 never busy-waits.")
@apply_options(heartbeat_options)
@log_option
@friendly
def master_command(host: str, port: int, cluster: Optional[str], insecure: bool,
                   max_message_size: int, max_jobs_per_client: int, max_bytes_per_client: int,
                   http_port: Optional[int], http_host: str, spin: float, heartbeat: float,
                   liveness: int, log_level: str) -> None:
    """Run a master: route jobs from clients to workers until SIGINT/SIGTERM."""
    import zmq

    from .cluster import advertised_host, cluster_dir, read_json
    from .master import Limits, Master
    from .security import master_keys

    cdir = cluster_dir(cluster, create=True)
    setup_logging(log_level, _log_file(cluster, "master"))
    keys = None if insecure else master_keys(cdir)
    limits = Limits(max_message_size, max_jobs_per_client, max_bytes_per_client)
    try:
        master = Master(host, port, heartbeat=heartbeat, liveness=liveness, keys=keys,
                        cluster_dir=cdir, limits=limits, spin=spin)
    except zmq.ZMQError as e:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {e}; is another master running? try --port 0"
        ) from e

    def on_signal(signum: int, frame: Any) -> None:
        master.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dashboard = None if http_port is None else _dashboard(master, http_host, http_port)
    mjson = _record_master(cdir, advertised_host(host), master.port, keys is not None,
                           dashboard.url if dashboard else None)
    logging.getLogger("cw.master").info("master listening on %s:%d (%s)", host, master.port, mjson)
    try:
        master.run()
    finally:
        if dashboard is not None:
            dashboard.close()
        master.close()
        if (read_json(mjson) or {}).get("pid") == os.getpid():
            mjson.unlink(missing_ok=True)
        logging.getLogger("cw.master").info("master stopped")


def _record_master(cdir: Path, host: str, port: int, secure: bool, http: Optional[str]) -> Path:
    """master.json: how clients, workers and launchers find this master."""
    from .cluster import pid_namespace, write_json

    mjson = cdir / "master.json"
    write_json(mjson, {"host": host, "port": port, "pid": os.getpid(), "protocol": PROTOCOL_VERSION,
                       "hostname": socket.gethostname(), "started": time.time(),
                       "slurm_job": os.environ.get("SLURM_JOB_ID"), "cluster": cdir.name,
                       "secure": secure, "http": http, "pidns": pid_namespace()})
    return mjson


def _dashboard(master: Any, host: str, port: int) -> Any:
    """Start the dashboard's HTTP thread; the master's loop feeds it snapshots."""
    from .dashboard import Dashboard

    try:
        dashboard = Dashboard(host, port)
    except OSError as e:
        master.close()
        raise click.ClickException(f"cannot serve the dashboard on {host}:{port}: {e}; "
                                   "pick another --http-port, or 0 for a free one") from e
    master.monitor.http_url = dashboard.url
    master.monitor.dashboard = dashboard
    dashboard.publish(master.snapshot())
    dashboard.start()
    logging.getLogger("cw.master").info("dashboard at %s", dashboard.url)
    return dashboard


@main.command("worker")
@click.argument("host", required=False)
@click.option("--port", type=PORT, envvar="CW_PORT", default=None,
              help="Master port [default: from master.json, else 5494].")
@click.option("--procs", type=Procs(), default="1", show_default=True,
              help="Executor processes; 'auto' = the CPUs this worker may use.")
@click.option("--slurm", is_flag=True, help="Find the master through SLURM's queue.")
@click.option("--grace", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds a running job may take to finish on SIGTERM.")
@click.option("--prefetch", type=click.IntRange(0, 64), default=1, show_default=True,
              help="Tasks each executor holds beyond the one it runs (0 for long jobs "
                   "that should start on the first free executor).")
@click.option("--batch", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Most tasks an executor holds while its jobs take about a millisecond or "
                   "less, to save messages (1: never more than --prefetch allows).")
@click.option("--master-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Exit when the master is silent this many seconds, counted from the start "
                   "(no orphans once it is gone) [default: wait for it forever].")
@cluster_option
@insecure_option
@apply_options(heartbeat_options)
@log_option
@friendly
def worker_command(host: Optional[str], port: Optional[int], procs: int, slurm: bool,
                   grace: float, prefetch: int, batch: int, master_timeout: Optional[float],
                   cluster: Optional[str], insecure: bool, heartbeat: float, liveness: int,
                   log_level: str) -> None:
    """Run a worker for the master at HOST [default: from the cluster directory]."""
    from .cluster import cluster_dir, cluster_name, find_master
    from .security import client_keys
    from .worker import Supervisor

    logfile = _log_file(cluster, "worker")
    setup_logging(log_level, logfile)
    if logfile is not None:  # the executors it starts log to the same file, at the same level
        os.environ["CW_LOG_FILE"] = str(logfile)
    os.environ["CW_LOG_LEVEL"] = log_level
    keys = None if insecure else client_keys(cluster_dir(cluster))
    if slurm and host is None:
        from .slurm import master_host

        host = master_host(cluster, wait=True)
    host, port = find_master(host, port, cluster)
    sup = Supervisor(host, port, procs, heartbeat=heartbeat, liveness=liveness, grace=grace,
                     keys=keys, cluster=cluster_name(cluster), prefetch=prefetch, batch=batch,
                     master_timeout=master_timeout)

    def on_signal(signum: int, frame: Any) -> None:
        sup.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sup.run()
    sys.exit(sup.exit_code)


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON snapshot (as /api/status serves it).")
@click.option("--watch", is_flag=True, help="Refresh in place until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="Seconds to wait for the master's answer.")
@cluster_option
@insecure_option
@friendly
def status_command(as_json: bool, watch: bool, interval: float, timeout: float, cluster: Optional[str],
                   insecure: bool) -> None:
    """Show the master, its workers, clients, queue and throughput."""
    from .cluster import find_master
    from .errors import MasterUnavailableError
    from .launch import query_status
    from .view import render

    host, port = find_master(None, None, cluster)

    def show() -> str:
        snap = query_status(host, port, timeout, cluster=cluster, insecure=insecure)
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

    check_name(name)
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
    target = _authorized(cluster) / f"{name}.key"
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
