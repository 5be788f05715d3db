"""A job's prints go to its worker's log, one line per event, tagged with the job id.

``install()`` (once, in an executor process) puts line-buffering wrappers
around ``sys.stdout`` and ``sys.stderr``; ``set_job(jid)`` and
``set_job(None)`` bracket each job. While a job runs, each complete line it
writes becomes one INFO record of the ``cw.job`` logger::

    2026-01-02 10:11:12,345 INFO cw.job[4242]: job 17 stdout: hello

so it lands wherever the worker logs (its file under ``logs/``) with a
timestamp. Outside a job, writes pass through untouched. Only Python-level
writes are caught: output a C library or a child process writes to file
descriptors 1 and 2 goes to the worker's raw stdout/stderr.
"""
from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Optional, TextIO

log = logging.getLogger("cw.job")

_job: Optional[int] = None
_local = threading.local()  # set while logging, so a handler writing to us cannot recurse


class JobStream(io.TextIOBase):
    """Wraps a text stream: during a job, whole lines become log records."""

    def __init__(self, name: str, inner: TextIO) -> None:
        self.name = name
        self.inner = inner
        self.partial = ""
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        if _job is None or getattr(_local, "busy", False):
            return self.inner.write(text)
        with self.lock:
            lines = (self.partial + text).split("\n")
            self.partial = lines.pop()
        for line in lines:
            emit(self.name, line)
        return len(text)

    def flush_job(self) -> None:
        """At the end of a job: a last line without a newline still gets logged."""
        with self.lock:
            rest, self.partial = self.partial, ""
        if rest:
            emit(self.name, rest)

    def flush(self) -> None:
        self.inner.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "errors", "strict")

    def __getattr__(self, name: str) -> object:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)  # .buffer, .reconfigure ...: the real stream's


def emit(name: str, line: str) -> None:
    _local.busy = True
    try:
        log.info("job %s %s: %s", _job, name, line.rstrip("\r"))
    finally:
        _local.busy = False


def install() -> None:
    """Wrap this process's ``sys.stdout`` and ``sys.stderr`` (idempotent)."""
    if not isinstance(sys.stdout, JobStream):
        sys.stdout = JobStream("stdout", sys.stdout)
    if not isinstance(sys.stderr, JobStream):
        sys.stderr = JobStream("stderr", sys.stderr)


def set_job(jid: Optional[int]) -> None:
    """The job now running in this process (None: between jobs)."""
    global _job
    if jid is None:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, JobStream):
                stream.flush_job()
    _job = jid
