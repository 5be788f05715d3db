"""Where the master is, as clients, workers and the CLI look for it."""
from __future__ import annotations

import os
from typing import Optional

from . import squeue
from .cluster import cluster_dir, cluster_name, env_port, master_problem, read_json, read_master
from .errors import ClusterError, MasterUnavailableError
from .protocol import DEFAULT_PORT


def find_master(
    host: Optional[str] = None, port: Optional[int] = None, cluster: Optional[str] = None
) -> tuple[str, int]:
    """Where the master is: arguments, environment, master.json, SLURM.

    Nothing naming an address (no host, no port, no ``CW_MASTER_ADDRESS``,
    no ``CW_PORT``, no running master's ``master.json``, no SLURM master
    job) is an error naming the file looked for: dialling the default port
    then would reach whatever listens there, which on a shared machine may
    be another user's program.
    """
    info = read_master(cluster) if host is None or port is None else None
    if info is None and (host is None or port is None) and not os.environ.get("CW_MASTER_ADDRESS"):
        problem = master_problem(cluster)
        if problem is not None:  # not taken silently for "no master": said, with the file
            raise ClusterError(f"{problem}; a master rewrites it when it starts (remove it if none runs)")
    if host is None:
        host = os.environ.get("CW_MASTER_ADDRESS") or (info or {}).get("host")
    if host is None:
        host = squeue.master_host(cluster, wait=False) if squeue.available() else None
    if port is None:
        port = env_port() or (info or {}).get("port")
    if host is None and port is None:
        raise MasterUnavailableError(_nowhere(cluster))
    return host or "127.0.0.1", int(port or DEFAULT_PORT)


def follows(host: Optional[str], port: Optional[int], cluster: Optional[str]) -> Optional[str]:
    """The cluster whose master.json a client follows when its master goes
    silent (a successor master job, a master restarted elsewhere), or None
    where the user pinned the address: a port given, ``CW_PORT`` or
    ``CW_MASTER_ADDRESS`` set, or a host other than master.json's (an SSH
    tunnel's, say)."""
    pinned = port is not None or env_port() is not None or os.environ.get("CW_MASTER_ADDRESS")
    if host is not None and not pinned:
        info = read_master(cluster)
        pinned = info is None or info.get("host") != host
    return None if pinned else cluster_name(cluster)


def _nowhere(cluster: Optional[str]) -> str:
    """No master found for ``cluster``: which file said so, and what to do."""
    path = cluster_dir(cluster) / "master.json"
    left = read_json(path)
    found = (f"{path} was left by master pid {left.get('pid')}, which is no longer running"
             if left is not None else f"{path} does not exist")
    return (f"no running master for cluster {cluster_name(cluster)!r}: {found}; start one "
            "(`cw local start`), or say where yours is (host=/port=, --cluster, "
            "CW_MASTER_ADDRESS, CW_PORT)")
