"""Lanes: a client's jobs handed straight to an executor on its own host.

::

    client ─SUBMIT─► master ─TASK─► executor          the usual trip: four hops
    client ◄─LEASE── master                           while the cluster is idle,
    client ─TASK───────────────────► executor (lane)  then two hops, ipc://
    client ◄─RESULTS──────────────── executor

A sequential caller (submit one, wait, submit the next) pays every hop of
a trip, and the master's two turns: half the round trip on a small host.
So while a client has a single job in flight, the master may lend it an
idle executor of the same host (shared-memory host key, as ``cw.shm``),
and the client sends such jobs to that executor's lane directly. The
master still decides who runs what: it lends one executor to one client at
a time, takes it back (LEASE without a lane) as soon as jobs queue up or
the executor drains or goes. Should the lane close with jobs in it (the
executor died or stopped), the client sees it close and sends those jobs
through the master again: it keeps every unfinished job's frames, as for a
master restart. Jobs with a
timeout never take a lane; the master enforces timeouts.

A lane is a ROUTER on an ``ipc://`` socket in ``lanes/`` of the user's
private directory (``cw.shmdir``: mode 0700, checked, under a name no other
user can derive and so take first): the same trust as the cluster's key
files, no CURVE needed on a socket no other user can reach. ``CW_LANES=0``
in a worker's environment turns lanes off. Where lanes are off, the
executor says why in its READY and ``cw status`` shows it.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

from . import shm, shmdir
from .cluster import pid_alive

log = logging.getLogger(__name__)

_SOCKET = re.compile(r"lane-(\d+)-(\d+)")  # pid namespace, pid


def enabled() -> bool:
    return os.environ.get("CW_LANES", "1").strip().lower() not in ("0", "no", "false", "off")


def directory() -> tuple[Optional[Path], str]:
    """The owner's lane directory (made 0700), or None and why not."""
    return shmdir.subdirectory("lanes")


def sweep(directory: Path, pidns: int) -> None:
    """Remove the sockets of executors of our pid namespace that died
    without closing theirs (another namespace's pids mean nothing here)."""
    for entry in directory.iterdir():
        m = _SOCKET.fullmatch(entry.name)
        if m is None or int(m.group(1)) != pidns:
            continue
        try:
            os.kill(int(m.group(2)), 0)
        except ProcessLookupError:
            entry.unlink(missing_ok=True)
        except OSError:
            pass  # alive


def any_alive(directory: Path, pidns: int) -> bool:
    """Whether the lane of an executor that runs is in ``directory`` (one of
    another pid namespace counts: its pids mean nothing here)."""
    for entry in directory.iterdir():
        m = _SOCKET.fullmatch(entry.name)
        if m is not None and (int(m.group(1)) != pidns or pid_alive(int(m.group(2)))):
            return True
    return False


def remove(pid: int) -> None:
    """Remove the socket of an executor of this pid namespace that ended:
    libzmq leaves an ``ipc://`` socket's file behind when it closes."""
    if shm.host_key() is None:  # no shared memory here: no lanes either
        return
    path = Path(shm.root()) / "lanes" / f"lane-{shm.pid_namespace()}-{pid}"
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.debug("cannot remove %s: %s", path, e)


def valid_address(address: str) -> bool:
    """A lane in this user's lane directory: no master of ours lends another."""
    if shm.host_key() is None:
        return False
    return address.startswith(f"ipc://{shm.root()}/lanes/lane-") and ".." not in address
