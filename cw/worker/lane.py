"""An executor's end of a lane: the ``ipc://`` ROUTER a client it is lent to
sends jobs to directly (see ``cw.lanes`` for the whole picture)."""
from __future__ import annotations

import logging
import os
from typing import Optional

import zmq

from .. import shm, shmdir
from ..lanes import directory, enabled, sweep

log = logging.getLogger(__name__)


def bind() -> tuple[Optional[zmq.Socket], str]:
    """This executor's lane: a bound ROUTER and its address; or None and why
    lanes are off here (not wanted, no shared memory, no safe directory)."""
    sock, said = _bind()
    if sock is None:
        log.info("lanes off: %s", said)
    return sock, said


def _bind() -> tuple[Optional[zmq.Socket], str]:
    if not enabled():
        return None, "CW_LANES=0 in the worker's environment"
    if shm.host_key() is None:
        return None, f"no shared memory: {shm.off_reason()}"
    where, why = directory()
    if where is None:
        return None, why
    pidns = shm.pid_namespace()
    sweep(where, pidns)
    path = where / f"lane-{pidns}-{os.getpid()}"
    address = f"ipc://{path}"
    if len(address.encode()) > 100:  # sun_path holds 108 bytes
        return None, f"{shmdir.shown(path)} is too long a socket path"
    path.unlink(missing_ok=True)  # a dead process's, whose pid this one has now
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    # A result for a client that left (or gave up on us while we were
    # frozen, and sent the job through the master) fails to send, and is
    # not counted as a lane job done: the master counts that job's rerun.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    try:
        sock.bind(address)
    except zmq.ZMQError as e:
        sock.close()
        return None, f"cannot bind {shmdir.shown(address)}: {e}"
    return sock, address
