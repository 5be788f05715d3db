"""A job's devices on its executor: the GPUs and CPUs the master gave it
(``cw.master.resources``), set for the job's time and put back after."""
from __future__ import annotations

import logging
import os
from typing import Optional

log = logging.getLogger(__name__)

_ABSENT = "\0absent"  # CUDA_VISIBLE_DEVICES was not set


def place(given: Optional[tuple]) -> Optional[tuple]:
    """Give a job its devices, ``(GPU ids, CPU ids)`` (either None): its
    CUDA_VISIBLE_DEVICES, and the affinity of this thread, which the
    job's threads and processes inherit. Return what they replaced."""
    if given is None:
        return None
    gpus, cpus = given
    before = (None if gpus is None else os.environ.get("CUDA_VISIBLE_DEVICES", _ABSENT),
              None if cpus is None else os.sched_getaffinity(0))
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    if cpus is not None:
        try:
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        except (OSError, ValueError) as e:  # ids this host does not have: it runs unbound, and says so
            log.warning("cannot keep the job to CPUs %s: %s", cpus, e)
    return before


def place_back(before: Optional[tuple]) -> None:
    """Undo ``place``."""
    if before is None:
        return
    visible, affinity = before
    if visible == _ABSENT:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    elif visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    if affinity is not None:
        os.sched_setaffinity(0, affinity)
