"""The jobs a client holds until their results arrive: the client is the source of truth.

``HeldJobs`` keeps every unfinished job's frames (``pending``), so that any
reconnect or closed lane can send them again, and takes in RESULTS: a
duplicate is dropped, a job whose executor could not map its shared memory
is sent again (``bounce``), the others wait in ``delivering`` until the I/O
core hands them to ``on_result`` outside its lock. It also owns the shared
memory files of the jobs held: released once a result is handed over, or
the job cancelled or failed. Runs under the I/O core's lock, but ``deliver``.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

from .. import blobs, direct, shm
from ..protocol import STATUSES, Message, Status
from ..resources import request
from .link import MasterLink

_UNREACHABLE = Status.UNREACHABLE.value  # an Enum's .value is a property: dear per result

log = logging.getLogger(__name__)

# on_result(job id, status, payload frames, error[, seconds it ran[, worker]]):
# the error is the master's text for a failed job, or an exception when the
# client gave up; the worker is named when no STARTED did (a quick job).
ResultHandler = Callable[..., None]


class HeldJobs:
    def __init__(self, link: MasterLink, on_result: ResultHandler) -> None:
        self.link = link
        self.on_result = on_result
        self.pending: dict[int, tuple] = {}  # id -> (payload frames, SUBMIT options)
        self.delivering: deque = deque()  # results of this turn, for on_result after it
        # Big arguments go through shared memory until an executor cannot map them.
        self.shared = shm.host_key() is not None

    def __len__(self) -> int:
        return len(self.pending)

    def hold(self, jid: int, payload: tuple, options: dict) -> None:
        self.pending[jid] = (payload, options)

    def drop(self, jid: int) -> bool:
        """Forget a cancelled job (its files go); False if none was held."""
        held = self.pending.pop(jid, None)
        if held is None:
            return False
        _let_go(held[0])
        return True

    def held(self, ids: Optional[Iterable[int]] = None, but: frozenset = frozenset()) -> Iterator[tuple]:
        """``(id, payload, options)`` of the jobs held (of ``ids`` only, if given), but ``but``."""
        for jid in self.pending if ids is None else ids:
            if jid in self.pending and jid not in but:
                yield (jid, *self.pending[jid])

    def take(self, msg: Message) -> None:
        """A RESULTS message from the master or a lane."""
        frames = iter(msg.payload)
        for result in msg.body.results:
            payload = tuple(islice(frames, result.frames))
            if len(payload) > 1:
                payload = direct.resolve(payload)  # buffers its executor pushed (cw.direct)
            held = self.pending.pop(result.id, None)
            if held is None:  # a duplicate: drop it
                shm.discard(payload)
            elif result.status == _UNREACHABLE and shm.bounced(held[0]):
                self.bounce(result.id, *held)
                shm.discard(payload)
            else:
                self.delivering.append((result, payload, held[0]))

    def bounce(self, jid: int, payload: tuple, options: dict) -> None:
        """Resend a job whose executor could not map its shared memory.

        Files still here: that executor cannot see them (another host or
        container), so the bytes go in the message, and later jobs' too.
        Files gone: an executor of this host claimed them for an earlier run
        of the job (it died, the job was requeued): fresh files, then.
        """
        if shm.unclaimed(payload):
            if self.shared:
                log.info("an executor cannot reach this client's shared memory (another "
                         "host or container): big arguments travel through the master")
                self.shared = False
            again = tuple(shm.inline(f) for f in payload)
        else:
            again = tuple(shm.reissue(f, os.getpid()) for f in payload)
        shm.release(payload)
        self.pending[jid] = (again, options)
        self.link.send_jobs([(jid, again, options)])

    def deliver_next(self) -> bool:
        """Hand one result of the turn to ``on_result`` (without the lock: a
        user thread woken by it can send its next job at once); False: none left."""
        if not self.delivering:
            return False
        result, payload, sent = self.delivering.popleft()
        self.on_result(result.id, STATUSES[result.status], payload, result.error, result.ran, result.worker)
        # After the handler: freeing a big file takes milliseconds.
        _let_go(sent)
        shm.discard(payload)  # result files the handler did not take
        return True

    def undeliver(self) -> None:
        """Hold again the results not handed over (a handler failed), to fail them."""
        while self.delivering:
            result, payload, sent = self.delivering.popleft()
            self.pending[result.id] = (sent, None)
            shm.discard(result)

    def fail(self, error: Exception) -> None:
        """Fail every job held (results received this turn are still handed over)."""
        pending, self.pending = self.pending, {}
        for jid, (payload, _) in pending.items():
            _let_go(payload)
            self.on_result(jid, Status.LOST, (), error)

    def release(self) -> None:
        """At shutdown: free the files of the jobs still held, and the host's
        copies of blobs this process wrote (another client of it may fetch)."""
        for payload, _ in self.pending.values():
            _let_go(payload)
        blobs.store.close()


def _let_go(payload: tuple) -> None:
    """A job is over: its shared-memory files and its hold on a blob go."""
    shm.release(payload)
    blobs.store.let_go(payload)


def job_options(retries: int, timeout: Optional[float], expected: Optional[float] = None,
                resources: Optional[Mapping[str, Any]] = None) -> dict:
    """A job's options as SUBMIT's header carries them, checked."""
    if retries < 0:
        raise ValueError("retries must be >= 0")
    options: dict = {"retries": retries}
    for name, seconds in (("timeout", timeout), ("expected", expected)):
        if seconds is not None:
            if not 0 < seconds < 1e9:
                raise ValueError(f"{name} must be a positive number of seconds")
            options[name] = seconds
    need = request(resources)
    if need is not None:
        options["resources"] = need
    return options
