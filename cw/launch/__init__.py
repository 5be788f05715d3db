"""Launchers start and stop masters and workers; they hold no job logic.

``query_status`` and ``wait_for_workers`` are shared by all of them: a
launcher returns only once the master answers and the workers registered.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import zmq

from ..cluster import cluster_dir
from ..errors import ClusterError, MasterUnavailableError
from ..protocol import Kind, Message, version_mismatch
from ..security import apply_client, client_keys, insecure_default, monitor, read_monitor, silence


def query_status(host: str, port: int, timeout: float = 5.0, *, cluster: Optional[str] = None,
                 insecure: Optional[bool] = None) -> dict:
    """Ask a master for its STATUS snapshot; ``MasterUnavailableError`` if it is silent."""
    keys = None if insecure_default(insecure) else client_keys(cluster_dir(cluster))
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    apply_client(sock, keys)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IDENTITY, b"q" + os.urandom(8))
    mon = monitor(sock)  # a handshake refused (keys, --insecure on one end only) is said at once
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(mon, zmq.POLLIN)
    seen: set = set()
    address = f"{host}:{port}"
    try:
        sock.connect(f"tcp://{host}:{port}")
        sock.send_multipart(Message(Kind.STATUS).to_frames())
        deadline = time.monotonic() + timeout
        while poller.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            refused = read_monitor(mon, address, keys is not None, seen)
            if refused:
                raise ClusterError(refused)
            if not sock.poll(0):
                continue
            snap = _status_reply(sock.recv_multipart(), address)
            if snap is not None:
                return snap
        read_monitor(mon, address, keys is not None, seen)
        raise MasterUnavailableError(f"no cw master answered at tcp://{address} within {timeout:g} s: "
                                     f"{silence(seen, address, keys is not None)}")
    finally:
        sock.disable_monitor()
        mon.close(linger=0)
        sock.close()


def _status_reply(frames: list, address: str) -> Optional[dict]:
    """A STATUS reply's snapshot; None for anything else; a refusal raised."""
    try:
        msg = Message.from_frames(frames)
    except Exception:
        mismatch = version_mismatch(frames, address, "this cw")
        if mismatch:
            raise ClusterError(mismatch) from None
        return None
    if msg.kind is Kind.STATUS:
        return msg.body  # a STATUS reply's body is its snapshot
    if msg.kind is Kind.ERROR:
        raise ClusterError(f"master at {address} refused STATUS: {msg.body.error}")
    return None


def wait_until(check: Callable[[], Optional[dict]], timeout: float, poll: float = 0.1) -> Optional[dict]:
    """Call ``check`` until it returns a value or ``timeout`` passes: soon
    at first (a local cluster is up in a fraction of a second), then every
    ``poll`` seconds."""
    deadline = time.monotonic() + timeout
    pause = min(0.02, poll)
    while True:
        value = check()
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(pause)
        pause = min(poll, pause * 2)


def wait_for_workers(host: str, port: int, pids: set, procs: int, timeout: float, *,
                     cluster: Optional[str] = None, insecure: Optional[bool] = None,
                     poll: float = 0.2) -> dict:
    """Wait until the workers with these supervisor pids and their executors
    registered, asking the master every ``poll`` seconds at most."""
    def registered() -> Optional[dict]:
        try:
            snap = query_status(host, port, timeout=2, cluster=cluster, insecure=insecure)
        except MasterUnavailableError:
            return None
        have = {w["pid"] for w in snap["workers"] if w["executors"] >= procs}
        return snap if pids <= have else None

    snap = wait_until(registered, timeout, poll=poll)
    if snap is None:
        raise ClusterError(
            f"workers did not all register with the master at {host}:{port} "
            f"within {timeout:g} s; see their logs"
        )
    return snap
