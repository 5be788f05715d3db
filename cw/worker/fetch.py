"""The executor's side of blobs (``cw.blobs``): fetch a job's function before
running it, when the job refers to one this executor lacks.

The job stays first in the executor's queue while its blob is on the way:
jobs run in the order the master sent them. One FETCH per blob; BLOB
brings the bytes (checked against the digest) or says the client holds it
no longer, and no answer within ``FETCH_SECONDS`` counts as that too: the
job then fails with an error that says which, never waits for ever.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Optional

from .. import blobs, serialize
from ..protocol import Blob, Kind, Message
from .direct import DirectPeers, Route
from .hostcache import HostCache

log = logging.getLogger(__name__)



class Fetcher:
    def __init__(self, send: Callable[[Message], None], direct: Optional[DirectPeers] = None,
                 route_of: Callable[[Any], Optional[Route]] = lambda frame: None,
                 host: Optional[HostCache] = None) -> None:
        self.send = send
        self.host = host  # the blobs this host's executors share (cw.worker.hostcache)
        self.host_wait: Optional[bytes] = None  # a blob another executor of this host fetches
        self.from_host = 0  # blobs taken from the host's copy, without a fetch
        self.direct = direct  # the job's client's direct path (cw.direct), tried first
        self.route_of = route_of  # a job's context frame -> its client's direct path, if any
        self.failure: Optional[str] = None  # why the first job cannot have its blob
        self.waiting: Optional[bytes] = None  # the digest asked for
        self.tid = 0  # the job that needs it: the master finds its client by it
        self.parts: Optional[bytearray] = None  # the chunks so far
        self.function = False  # whether it is the job's function (else an argument's buffer)
        self.deadline = 0.0
        self.asked = 0
        self.fetched = 0  # blobs received (and bytes): this executor's share of the traffic
        self.fetched_bytes = 0

    def ready(self, tid: int, frames: Any, now: float) -> bool:
        """Whether a job (its ``(context, call, *buffers)`` frames) can run
        now; if not, the first blob it lacks is asked for (once): straight
        from its client where it offers a direct path, else through the master."""
        for key, is_function in blobs.needs(frames[1:]):
            if serialize.has_blob(key) or self.take_host_copy(key, is_function):
                continue
            if self.hold_off(key, now):
                return False
            if self.waiting != key and self.fetch_directly(frames[0], key, is_function):
                if self.failure is not None:
                    return False
                continue
            if self.waiting != key:
                self.waiting, self.tid, self.parts, self.function = key, tid, None, is_function
                self.asked = 0  # the next offset to ask for, once the first chunk says its size
                self.ask(0, now)
            return False
        return True

    @property
    def pending(self) -> bool:
        """Whether the first job waits for a blob (its own fetch, or another executor's)."""
        return self.waiting is not None or self.host_wait is not None

    def take_host_copy(self, key: bytes, is_function: bool) -> bool:
        """Whether this host has the blob already: kept without a fetch."""
        fd = self.host.open(key) if self.host is not None else None
        if fd is None:
            return False
        if self.host_wait == key:
            self.host_wait = None
        self.from_host += 1
        if is_function:  # mapped copy-on-write: its big buffers stay in the host's pages (pickling.unpack)
            mapped = serialize.Pages(fd=fd).map()
            serialize.fetched.put(key, mapped, len(mapped), time.monotonic())
        else:
            serialize.keep_fetched(key, None, fd=fd)
        return True

    def hold_off(self, key: bytes, now: float) -> bool:
        """Whether another executor of this host fetches ``key`` now: wait for it."""
        if self.host is None or self.waiting == key:
            return False
        if self.host.claim(key):
            self.host_wait = None
            return False
        if self.host_wait != key:
            self.host_wait, self.deadline = key, now + blobs.FETCH_SECONDS
        return True

    def close(self) -> None:
        if self.host is not None:
            self.host.close()

    def tidy(self, now: float) -> None:
        serialize.tidy_caches(now)
        if self.host is not None:
            self.host.tidy(now)

    def ask(self, offset: int, now: float) -> None:
        assert self.waiting is not None
        self.deadline = now + blobs.FETCH_SECONDS
        self.send(Message(Kind.FETCH, {"blob": self.waiting.hex(), "id": self.tid, "offset": offset}))

    def fetch_directly(self, context: Any, key: bytes, is_function: bool) -> bool:
        """Whether the direct path answered (with the blob, or ``failure``)."""
        route = self.route_of(context) if self.direct is not None else None
        if route is None:
            return False
        files: list = []  # where an argument's blob lands: the host's copy, else a memfd

        def land(size: int) -> Any:
            if is_function:
                return blobs.zeroed(size)
            claim = self.host.claims.get(key) if self.host is not None else None
            memory, fd = blobs.landing(size, claim)
            files.append(fd)
            return memory

        try:
            data, missing = self.direct.fetch(route, key, land)
        except BaseException:
            self.close_landing(key, files[0] if files else None)
            self.give_up(key)
            raise
        fd = files[0] if files else None
        if data is None and missing is None:
            self.close_landing(key, fd)
            return False  # the path failed: the master's, then
        self.function = is_function
        if missing is not None:
            self.failure = f"{self.what()} {missing}"
        elif self.direct.keys is None and blobs.digest(data) != key:  # sealed checks it, else we do
            self.failure = f"{self.what()} arrived damaged: its digest differs"
        else:
            self.keep(key, data, is_function, fd)
        if self.failure is not None:
            self.close_landing(key, fd)
            self.give_up(key)
        return True

    def close_landing(self, key: bytes, fd: Optional[int]) -> None:
        """A landing file of its own (not the host's claim, which give_up frees)."""
        if fd is not None and (self.host is None or self.host.claims.get(key) != fd):
            os.close(fd)

    def overdue(self, now: float) -> Optional[str]:
        """The error for the waiting job once its blob is past due (or the
        direct path said it is gone)."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            return failure
        if self.host_wait is not None and now >= self.deadline:
            self.host_wait = None
            return (f"{self.what()} did not come from this host's other executors "
                    f"within {blobs.FETCH_SECONDS:g} s")
        if self.waiting is None or now < self.deadline:
            return None
        self.reset()
        return f"{self.what()} did not arrive from its client within {blobs.FETCH_SECONDS:g} s"

    def what(self) -> str:
        return f"the job's {'function' if self.function else 'argument'} (a blob, cw.blobs)"

    def refused(self) -> Optional[str]:
        """The master's ERROR no-blob: the job's client is gone."""
        if self.waiting is None:
            return None
        self.reset()
        return f"{self.what()} cannot be had: its client has left"

    def arrived(self, msg: Message, now: float) -> Optional[str]:
        """Take a BLOB chunk in; the error for the waiting job if it brings none."""
        body: Blob = msg.body
        if body.blob != (self.waiting.hex() if self.waiting else None):
            return None  # an answer to an earlier FETCH, no longer needed
        if body.missing:
            self.reset()
            return f"{self.what()} is no longer held by its client (it left, or the job was already over)"
        if self.parts is None:
            self.parts = bytearray()
        if body.offset != len(self.parts) or body.total is None or body.total > blobs.MAX_BLOB:
            return None  # not the chunk asked for (a repeat): the deadline still runs
        chunk = len(msg.payload[0])
        self.parts += msg.payload[0]
        if len(self.parts) < body.total and chunk:
            # WINDOW chunks on their way at once: the hops' encryption overlaps.
            self.asked = max(self.asked, len(self.parts))
            while self.asked < min(body.total, len(self.parts) + blobs.WINDOW * chunk):
                self.ask(self.asked, now)
                self.asked += chunk
            return None
        data, key = self.parts, self.waiting  # a bytearray: pickle and hashlib take it as it is
        self.waiting = self.parts = None
        if len(data) != body.total or blobs.digest(data) != key:
            self.give_up(key)
            return f"{self.what()} arrived damaged: its digest differs"
        self.keep(key, data, self.function)
        return None

    def keep(self, key: bytes, data: Any, is_function: bool, landed: Optional[int] = None) -> None:
        """A blob fetched: kept here, and for the host's other executors.
        ``landed``: the file it arrived in (the host's claim, or a memfd of
        its own), which then needs no copy."""
        claimed = landed is not None and self.host is not None and self.host.claims.get(key) == landed
        fd = self.host.publish(key, data, written=claimed) if self.host is not None else None
        if landed is not None and not claimed:
            fd = landed
        size = len(data)
        if is_function:  # the host's copy, where there is one: its pages are all the host's executors'
            serialize.fetched.put(key, data if fd is None else serialize.Pages(fd=fd).map(), size,
                                  time.monotonic())
        else:
            serialize.keep_fetched(key, None if fd is not None else data, fd=fd)
        self.fetched += 1
        self.fetched_bytes += size

    def reset(self) -> None:
        """No blob awaited any more (the job failed, or went elsewhere)."""
        self.give_up(self.waiting)
        self.waiting = self.parts = self.host_wait = None

    def give_up(self, key: Optional[bytes]) -> None:
        """A fetch that failed: another executor of the host may try it."""
        if self.host is not None and key is not None:
            self.host.abandon(key)
