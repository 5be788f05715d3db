"""Where the master is, as clients, workers and the CLI look for it."""
from __future__ import annotations

import os
from typing import Optional

from . import squeue
from .cluster import env_port, master_problem, read_master
from .errors import ClusterError
from .protocol import DEFAULT_PORT


def find_master(
    host: Optional[str] = None, port: Optional[int] = None, cluster: Optional[str] = None
) -> tuple[str, int]:
    """Where the master is: arguments, environment, master.json, SLURM, localhost."""
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
        port = env_port() or (info or {}).get("port", DEFAULT_PORT)
    return host or "127.0.0.1", int(port)
