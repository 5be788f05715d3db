"""An executor's end of a lane: the ``ipc://`` ROUTER a client it is lent to
sends jobs to directly (see ``cw.lanes`` for the whole picture)."""
from __future__ import annotations

import logging
import os
from typing import Optional

import zmq

from .. import shm
from ..lanes import directory, enabled, sweep

log = logging.getLogger(__name__)


def bind() -> Optional[tuple[zmq.Socket, str]]:
    """This executor's lane: a bound ROUTER and its address; None when lanes
    are off or impossible here (no shared memory, no safe directory)."""
    if not enabled() or shm.host_key() is None:
        return None
    where = directory()
    if where is None:
        return None
    pidns = shm.pid_namespace()
    sweep(where, pidns)
    path = where / f"lane-{pidns}-{os.getpid()}"
    address = f"ipc://{path}"
    if len(address.encode()) > 100:  # sun_path holds 108 bytes
        log.info("no lanes: %s is too long a socket path", path)
        return None
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
        log.info("no lanes: cannot bind %s: %s", address, e)
        return None
    return sock, address
