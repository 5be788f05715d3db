"""Facts about the host a process runs on, which every role may ask."""
from __future__ import annotations

import os
import resource
from typing import Optional


def cpus_available() -> int:
    """CPUs this process may use: affinity, cgroup quota and SLURM's allocation."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    for var in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            n = min(n, int(value))
            break
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def raise_fd_limit() -> Optional[int]:
    """Raise this process's soft limit of open files to its hard limit (the
    most an unprivileged process may); the soft limit now, None if unknown.

    A master holds a descriptor per peer connection, and another user's idle
    connections may take many of them; a client or worker holds one per
    connection and per lane. The soft limit (often 1024) is a default, not a
    choice: the hard one is what the machine's administrator allows.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    except (ValueError, OSError):
        return None
