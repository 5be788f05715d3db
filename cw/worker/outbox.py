"""An executor's results on their way to the master, and the thread that
sees that none waits behind another job.

Results of short jobs leave together (one RESULT for many: the master's
turn costs per message, not per job). A result held that way must not wait
for the job that runs next, which may take an hour: while a job runs, the
``Flusher`` thread sends what is held once the job has run ``HOLD_SECONDS``.

The executor's socket belongs to one thread at a time, handed over with a
lock (ZeroMQ allows a socket to move between threads across a full memory
barrier): the executor's own thread holds ``Outbox.lock`` always, except
while a job's function runs (``Outbox.lend``); the flusher takes the lock
only then, without waiting, and never touches anything else.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from ..protocol import Kind, Message, Result

HOLD_SECONDS = 0.002  # a result waits for the next job only after a job this short
POLL_SECONDS = 0.003  # how often the flusher looks while results are held


class Outbox:
    """Results not yet sent: those of short jobs go out together."""

    def __init__(self, send: Callable[[Message], None]) -> None:
        self.send = send
        self.lock = threading.Lock()
        self.lock.acquire()  # the executor's thread holds the socket (see above)
        self.held = threading.Event()  # set while results wait: the flusher watches
        self.job_started = 0.0  # perf_counter() when the running job began
        self.running = False  # a job's function runs (the lock is lent)
        self._clear()

    def _clear(self) -> None:
        self.entries: list = []
        self.frames: list = []
        self.busy = 0.0
        self.size = 0
        self.since = 0.0

    def add(self, entry: Result, frames: list, seconds: float, now: float) -> None:
        if not self.entries:
            self.since = now
            self.held.set()
        self.entries.append(entry)
        self.frames += frames
        self.busy += seconds
        self.size += sum(map(len, frames))

    def due(self, last_job: float, now: float) -> bool:
        """Send now unless the jobs are short and the batch small and young."""
        return (last_job >= HOLD_SECONDS or len(self.entries) >= 32 or self.size >= 1 << 20
                or now - self.since >= HOLD_SECONDS)

    def flush(self) -> None:
        if self.entries:
            self.send(Message(Kind.RESULT, {"results": self.entries, "busy": self.busy},
                              tuple(self.frames)))
            self._clear()
            self.held.clear()

    def drop(self) -> None:
        """Forget what is held (the master forgot us: its clients resend)."""
        self._clear()
        self.held.clear()

    def lend(self) -> None:
        """A job's function is about to run: the flusher may send what is
        held, until ``take_back`` (plain calls: a ``with`` costs a job more)."""
        self.job_started = time.perf_counter()
        self.running = True
        self.lock.release()

    def take_back(self) -> None:
        self.lock.acquire()
        self.running = False


class Flusher(threading.Thread):
    """Sends held results while a long job runs (see the module's docstring)."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__(name="cw-result-flusher", daemon=True)
        self.outbox = outbox
        self.stopped = False

    def run(self) -> None:
        box = self.outbox
        while not self.stopped:
            box.held.wait()
            time.sleep(POLL_SECONDS)
            # Looked at without the lock first: short jobs, whose results the
            # executor sends itself, never contend for it.
            if not box.running or time.perf_counter() - box.job_started < HOLD_SECONDS:
                continue
            if not box.lock.acquire(blocking=False):
                continue  # the executor's thread is at work: it sends them itself
            try:
                if not self.stopped and time.perf_counter() - box.job_started >= HOLD_SECONDS:
                    box.flush()
            finally:
                box.lock.release()

    def stop(self) -> None:
        self.stopped = True
        self.outbox.held.set()
