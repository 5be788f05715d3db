"""``cw master`` and ``python -m cw.master``: a master, started by hand or by a launcher."""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Optional

import click

from ..cli_common import (
    PORT,
    SIZE,
    apply_options,
    cluster_option,
    friendly,
    heartbeat_options,
    insecure_option,
    log_option,
)
from ..host import raise_fd_limit
from ..logfiles import role_log_file, setup_logging
from ..protocol import DEFAULT_PORT, PROTOCOL_VERSION


@click.command("master")
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
    from ..cluster import advertised_host, cluster_dir, read_json
    from ..security import master_keys
    from .state import Limits

    cdir = cluster_dir(cluster, create=True)
    setup_logging(log_level, role_log_file(cluster, "master"))
    keys = None if insecure else master_keys(cdir)
    raise_fd_limit()  # a descriptor per peer, and others' idle connections take some (cw.master.guard)
    master = _bind(host, port, heartbeat=heartbeat, liveness=liveness, keys=keys, cluster_dir=cdir,
                   limits=Limits(max_message_size, max_jobs_per_client, max_bytes_per_client), spin=spin)

    def on_signal(signum: int, frame: Any) -> None:
        master.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    dashboard = None if http_port is None else _dashboard(master, http_host, http_port)
    mjson = _record_master(cdir, advertised_host(host), master.port, keys is not None,
                           dashboard.url if dashboard else None)
    logging.getLogger("cw.master").info("master listening on %s:%d (%s)", host, master.port, mjson)
    _successor(cdir, master)
    try:
        master.run()
    finally:
        if dashboard is not None:
            dashboard.close()
        master.close()
        if (read_json(mjson) or {}).get("pid") == os.getpid():
            mjson.unlink(missing_ok=True)
        logging.getLogger("cw.master").info("master stopped")


def _successor(cdir: Path, master: Any) -> None:
    """In a SLURM job of a cluster with succession: the next master job
    waits behind this one, and this one hands over before its time limit."""
    from ..succession import Successor

    if Successor.wanted(cdir):
        Successor(cdir, master.handover.schedule).start()


def _bind(host: str, port: int, **options: Any) -> Any:
    """A master listening on ``host:port``, or a one-line error saying why not."""
    import zmq

    from .loop import Master

    try:
        return Master(host, port, **options)
    except zmq.ZMQError as e:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {e}; is another master running? try --port 0"
        ) from e


def _record_master(cdir: Path, host: str, port: int, secure: bool, http: Optional[str]) -> Path:
    """master.json: how clients, workers and launchers find this master."""
    from ..cluster import pid_namespace, write_json

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
