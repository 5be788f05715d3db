"""The direct path: blobs and big results between a client and the executors
of other hosts, without the master.

::

    executor ─FETCH{blob, offset}──────────────► client (its direct ROUTER)
    executor ◄─BLOB{blob, offset, total} [chunk]─ client
    executor ─BLOB{blob, offset, total} [chunk]─► client    a big result's buffer
    executor ◄─BLOB{blob, offset: total, total}── client    all of it arrived
    executor ─RESULT [..., REF + key, ...]──► master ──► client

Through the master a big buffer crosses two encrypted hops and the master's
memory; directly it crosses one. A client that can listen binds a ROUTER on
a port of ``CW_DIRECT_PORTS`` (default 5500-5599: the range to open in a
firewall from the compute nodes to where clients run), on the address it
reaches the master from (``CW_DIRECT_HOST`` overrides it), and names it in
its jobs' context frame with its public key. It is CURVE like every cw
socket: the client's key pair serves, and a ZAP handler admits the
cluster's client key and its workers' key (``cw.security``); plain only
under ``--insecure``.

An executor on another host (it shares no memory with the client: see
``cw.shm``) fetches the blobs a job lacks over the direct path, and pushes
each buffer of a result of ``cw.blobs.threshold()`` bytes or more to the
client before the result itself goes through the master, carrying a
reference instead. The client parks a pushed buffer until the result that
refers to it arrives (``Parked``).

When the executor cannot reach the client in ``CONNECT_SECONDS`` (a client
on a login node the compute nodes cannot reach, a firewall), it says so in
its log and uses the master's path for that client from then on; the client
sees blobs asked for through the master while it offers a direct path, and
warns once. Nothing is lost either way: the client keeps what it needs to
resend, as for a master restart.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

DEFAULT_PORTS = (5500, 5599)
CONNECT_SECONDS = 5.0  # no answer from a client's direct path within this: use the master's
PARK_SECONDS = 600.0  # a pushed buffer whose result never came (the executor died) goes


def enabled() -> bool:
    return os.environ.get("CW_DIRECT", "1").strip().lower() not in ("0", "no", "false", "off")


def ports() -> tuple[int, int]:
    """``CW_DIRECT_PORTS`` as (first, last); a malformed value is an error
    that names the variable (a typo must not silently close the path)."""
    raw = os.environ.get("CW_DIRECT_PORTS", "").strip()
    if not raw:
        return DEFAULT_PORTS
    first, dash, last = raw.partition("-")
    try:
        low = int(first)
        high = int(last) if dash else low
    except ValueError:
        low = high = -1
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"CW_DIRECT_PORTS={raw!r}: expected a port or a range FIRST-LAST "
                         f"within 1-65535, e.g. {DEFAULT_PORTS[0]}-{DEFAULT_PORTS[1]}")
    return low, high


def advertised_host(master_host: str) -> Optional[str]:
    """The address executors reach this client at: ``CW_DIRECT_HOST``, else
    the local address of the route to the master (no packet is sent)."""
    chosen = os.environ.get("CW_DIRECT_HOST", "").strip()
    if chosen:
        return chosen
    try:
        infos = socket.getaddrinfo(master_host, 9, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(infos[0][4])
            return str(probe.getsockname()[0])
    except (OSError, IndexError):
        return None


class Parked:
    """Buffers executors pushed to this client, each until the result that
    refers to it takes it (or ``PARK_SECONDS`` pass: its result never came)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: OrderedDict = OrderedDict()  # key -> (its bytes, when complete)
        self.bytes = 0

    def put(self, key: bytes, data: Any) -> None:
        now = time.monotonic()
        with self.lock:
            self.entries[key] = (data, now)
            self.bytes += len(data)
            while self.entries:
                old_key, (old, when) = next(iter(self.entries.items()))
                if now - when <= PARK_SECONDS:
                    break
                del self.entries[old_key]
                self.bytes -= len(old)

    def take(self, key: bytes) -> Optional[Any]:
        with self.lock:
            entry = self.entries.pop(key, None)
            if entry is None:
                return None
            self.bytes -= len(entry[0])
            return entry[0]


parked = Parked()  # this process's, shared by its clients
counts = {"served": 0, "served_bytes": 0, "received": 0, "received_bytes": 0,  # this client's
          "sealed": 0}  # executors given a sealed session (cw.seal)


def resolve(frames: Any) -> Any:
    """A result's frames with each pushed buffer's reference replaced by the
    buffer (a reference whose buffer is not parked stays, and fails to load)."""
    from . import blobs

    if len(frames) < 2 or not parked.entries:
        return frames
    out = list(frames)
    for i in range(1, len(out)):
        frame = out[i]
        if len(frame) == blobs.REF_BYTES:
            key = blobs.reference(frame)
            data = parked.take(key) if key is not None else None
            if data is not None:
                out[i] = data
    return tuple(out)


def context_fields(address: Optional[str], public: Optional[bytes]) -> dict:
    """What a job's context frame says of the direct path (nothing if none)."""
    if address is None:
        return {}
    fields: dict[str, Any] = {"direct": address}
    if public is not None:
        fields["direct_key"] = public.decode()
    return fields
