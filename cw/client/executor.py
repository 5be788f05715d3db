"""Clients: ``ClusterExecutor`` (concurrent.futures) and ``ClientThread`` (callbacks).

Both stand on one I/O core (``cw.client.iocore``): a background thread owning the
master socket. Pickling happens in the caller's thread, so an unpicklable
function or argument raises at ``submit``; results are unpickled in the I/O
thread and handed to futures or callbacks.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import sys
import time
from collections import deque
from concurrent import futures
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Optional, Union

from .. import blobs, squeue
from ..cluster import cluster_dir
from ..commands import Command, run_command
from ..discovery import find_master, follows
from ..errors import JobRejectedError, RemoteException, WorkerLostError
from ..host import raise_fd_limit
from ..joberrors import loads_error
from ..journal import Journal, call_key
from ..protocol import Status
from ..security import client_keys, insecure_default
from ..serialize import context_frame, dumps_call, loads_value
from ..share import Shared
from .iocore import IOCore
from .jobs import job_options
from .progress import total_of, with_progress

__all__ = ["ClusterExecutor", "SlurmExecutor", "RemoteException", "JobInfo"]

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 10_000


class _Context:
    """The client's cwd and sys.path as a frame, rebuilt only when they change."""

    def __init__(self) -> None:
        self.key: tuple = ("", [])
        self.frame = b""
        self.extra: dict = {}  # where the client's direct path listens (cw.direct), once connected

    def __call__(self) -> bytes:
        cwd = os.getcwd()
        if cwd != self.key[0] or sys.path != self.key[1]:
            self.key = (cwd, list(sys.path))
            self.frame = context_frame(cwd, self.key[1], self.extra)
        return self.frame

    def connected(self, core: IOCore) -> None:
        self.extra = {} if core.direct is None else core.direct.context_fields()
        self.key = ("", [])  # built afresh with them


def _outcome(status: Status, payload: tuple, error: Union[str, BaseException, None],
             jobid: object) -> tuple[bool, Any]:
    """(ok, value or exception) for a job's RESULT."""

    if isinstance(error, BaseException):
        return False, error
    if status is Status.OK:
        try:
            return True, loads_value(payload)
        except Exception as e:
            return False, RemoteException(f"cannot unpickle the result of job {jobid!r}: {e!r}", jobid)
    if status is Status.ERROR or status is Status.UNREACHABLE:
        if not payload:  # refused by the master itself: nothing ran
            return False, JobRejectedError(f"job {jobid!r} refused by the master: {error}")
        return False, loads_error(payload[0], jobid)
    if status is Status.TIMEOUT:
        return False, TimeoutError(error or f"job {jobid!r} ran past its timeout")
    if status is Status.CANCELLED:
        return False, futures.CancelledError()
    return False, WorkerLostError(error or f"job {jobid!r} was lost")


def _connect(host: Optional[str], port: Optional[int], cluster: Optional[str],
             insecure: Optional[bool], connect_timeout: float, on_result, on_started,
             heartbeat: float, liveness: int) -> IOCore:
    follow = follows(host, port, cluster)
    host, port = find_master(host, port, cluster)
    raise_fd_limit()  # each connection and lane is a descriptor; the soft limit is only a default
    keys = None if insecure_default(insecure) else client_keys(cluster_dir(cluster))
    core = IOCore(host, port, on_result=on_result, on_started=on_started,
                  connect_timeout=connect_timeout, keys=keys, heartbeat=heartbeat,
                  liveness=liveness, follow=follow)
    core.start()
    if not core.settled.wait(connect_timeout) or core.fatal is not None:
        error = core.fatal or core.unavailable()
        core.close(timeout=5)
        raise error
    return core


@dataclass(frozen=True)
class JobInfo:
    """Where and how long a job ran, as ``future.info`` tells it.

    ``worker``: ``host:pid`` of the executor it went to (None while queued);
    ``queued``: seconds from ``submit`` until the master gave it to that
    executor; ``ran``: seconds it ran there (None until it finished; also
    None when the master ended it: cancelled, timed out, lost).
    """

    worker: Optional[str]
    queued: Optional[float]
    ran: Optional[float]


class _Future(futures.Future):
    def __init__(self, core: IOCore, jid: int, registry: dict) -> None:
        super().__init__()
        self._cw = (core, jid, registry)
        self._cw_running = False
        self._cw_submitted = time.monotonic()
        self._cw_queued: Optional[float] = None
        self._cw_worker: Optional[str] = None
        self._cw_ran: Optional[float] = None
        self._cw_key: Optional[bytes] = None  # its call's key in the executor's journal, if any

    @property
    def info(self) -> JobInfo:
        """Which worker ran this job, how long it queued and how long it ran."""
        return JobInfo(self._cw_worker, self._cw_queued, self._cw_ran)

    def _started(self, worker: Optional[str]) -> None:
        self._cw_worker = worker  # again after a requeue: where it went last
        self._cw_queued = time.monotonic() - self._cw_submitted
        self._mark_running()

    def _finished(self, ran: Optional[float], worker: Optional[str]) -> None:
        """Its result came; a quick job's also says where it ran (no STARTED came)."""
        self._cw_ran = ran
        if worker is not None:
            self._cw_worker = worker
            self._cw_queued = max(0.0, time.monotonic() - self._cw_submitted - (ran or 0.0))

    def cancel(self, force: bool = False) -> bool:
        """Cancel a job not yet given to a worker: it leaves the master's queue.

        (``force`` is for ``ClusterExecutor.cancel``: should the job have
        reached a worker meanwhile, the master kills it.)
        """
        core, jid, registry = self._cw
        with self._condition:  # the Future's own (reentrant) lock: see _mark_running
            if not super().cancel():
                return False
            first = not self._cw_running
            if first:
                self._cw_running = True
                # Waiters (concurrent.futures.wait, as_completed) count a
                # cancelled future as done only once it is notified.
                self.set_running_or_notify_cancel()
        if first:
            registry.pop(jid, None)
            try:
                core.cancel(jid, force)
            except Exception:
                pass  # client closed or failed: nothing left to tell the master
        return True

    def _mark_running(self) -> bool:
        """In the I/O thread: RUNNING once; False if the user cancelled first."""
        with self._condition:
            if self._cw_running:
                return not self.cancelled()
            self._cw_running = True
            return self.set_running_or_notify_cancel()


class ClusterExecutor(futures.Executor):
    """A ``concurrent.futures.Executor`` whose calls run on cw workers.

    ``retries``: how often a job may lose its worker before it fails with
    ``WorkerLostError``; ``timeout``: seconds a job may run before its
    executor is killed and its future raises ``TimeoutError`` (None: no
    limit). Both are defaults that ``submit`` can override per job.
    ``heartbeat``/``liveness``: seconds between heartbeats, and how many
    missed ones make the master count as gone. ``journal``: a file that
    keeps each job's result once it succeeded (on the shared filesystem,
    for a program run from any node): the same program run again gets the
    results the journal holds at once and submits only the other jobs
    (``cw.journal``). A function whose code changed since is refused with
    ``JournalMismatchError``; ``journal_mismatch="ignore"`` runs its jobs
    again instead.
    """

    def __init__(self, host: Optional[str] = None, port: Optional[int] = None, *,
                 connect_timeout: float = 30, max_pending: int = DEFAULT_MAX_PENDING,
                 retries: int = 2, timeout: Optional[float] = None,
                 cluster: Optional[str] = None, insecure: Optional[bool] = None,
                 heartbeat: float = 1.0, liveness: int = 10,
                 journal: Union[str, os.PathLike, None] = None, journal_mismatch: str = "refuse") -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        job_options(retries, timeout)
        self._journal = None if journal is None else Journal(journal, journal_mismatch)
        self.max_pending = max_pending
        self.retries = retries
        self.timeout = timeout
        self._futures: dict[int, _Future] = {}
        self._ids = itertools.count(1)
        self._context = _Context()
        self._shutdown = False
        try:
            self._core = _connect(host, port, cluster, insecure, connect_timeout,
                                  self._on_result, self._on_started, heartbeat, liveness)
        except BaseException:
            if self._journal is not None:
                self._journal.close()
            raise
        self._context.connected(self._core)

    @property
    def address(self) -> str:
        return self._core.address

    @property
    def journal(self) -> Optional[Journal]:
        """The journal (``cw.journal.Journal``: ``path``, ``hits``, the results
        taken from it, ``kept``, those added), or None."""
        return self._journal

    def submit(self, fn: Callable, /, *args: Any, timeout: Optional[float] = None,  # type: ignore[override]
               retries: Optional[int] = None, expected: Optional[float] = None,
               resources: Optional[dict] = None, **kwargs: Any) -> futures.Future:
        """Run ``fn(*args, **kwargs)`` on a worker.

        ``timeout`` and ``retries`` are cw's (see the class); ``expected``:
        the seconds the job should take, so that it goes only to a worker
        with that long left before its time limit (SLURM's); ``resources``:
        what it needs, e.g. ``{"cpus": 4, "gpus": 1, "mem": "8G"}``
        (``cw.resources``). To pass arguments of those names to ``fn``, use
        ``submit_call``.
        """
        return self.submit_call(fn, args, kwargs, timeout=timeout, retries=retries, expected=expected,
                                resources=resources)

    def submit_call(self, fn: Callable, args: tuple = (), kwargs: Optional[dict] = None, *,
                    timeout: Optional[float] = None, retries: Optional[int] = None,
                    expected: Optional[float] = None, resources: Optional[dict] = None) -> futures.Future:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        options = job_options(self.retries if retries is None else retries,
                              self.timeout if timeout is None else timeout, expected, resources)
        key = None
        if self._journal is not None:
            key, done = self._journaled(fn, tuple(args), kwargs or {})
            if done is not None:
                return done
        jid = next(self._ids)  # the job's label in the worker's log: its submit order, from 1
        call = dumps_call(fn, tuple(args), kwargs or {}, shared=self._core.shared, label=jid)
        fut = _Future(self._core, jid, self._futures)
        fut._cw_key = key  # before its result can come: kept in the journal before it is seen
        self._futures[jid] = fut  # before the I/O thread can see the job
        try:
            self._core.submit(jid, (self._context(), *call), options)
        except BaseException:
            del self._futures[jid]
            blobs.store.let_go((b"", *call))  # never held: no result will let it go
            raise
        return fut

    def _journaled(self, fn: Callable, args: tuple, kwargs: dict) -> tuple[bytes, Optional[futures.Future]]:
        """The call's key in the journal, and a future done with its result
        if the journal holds it (``cw.journal``)."""
        assert self._journal is not None
        code = self._journal.code_of(args[0] if fn is _run_chunk else fn)  # a map's chunk: the user's
        key = call_key(fn, args, kwargs, code)
        held, value = self._journal.get(key)
        if not held:
            return key, None
        done: futures.Future = futures.Future()
        done.set_running_or_notify_cancel()
        done.set_result(value)
        return key, done

    @staticmethod
    def share(obj: Any) -> Shared:
        """Place ``obj`` once for many jobs: a small handle that a job taking
        it as an argument receives as the object itself. Pickled and hashed
        here, once; each executor fetches it once and keeps one copy for its
        jobs (treat it as read-only). See ``cw.share``."""
        return Shared(obj)

    def cancel(self, future: futures.Future, force: bool = False) -> bool:
        """Cancel a job; with ``force=True`` also one already running.

        A queued job is cancelled as by ``future.cancel()``. A running one
        (``force=True``) has its executor killed and replaced; its future
        then raises ``CancelledError`` (``future.cancelled()`` stays False,
        as concurrent.futures allows no running future to become cancelled).
        """
        if not isinstance(future, _Future):
            return future.cancel()
        if future.cancel(force):
            return True
        if not force or future.done():
            return False
        core, jid, registry = future._cw
        if registry.pop(jid, None) is None:
            return False  # its result is being delivered right now
        future.set_exception(futures.CancelledError("cancelled while running (force=True)"))
        try:
            core.cancel(jid, force=True)
        except Exception:
            pass  # client closed or failed: nothing left to tell the master
        return True

    def map(self, fn: Callable, *iterables: Iterable, timeout: Optional[float] = None,
            chunksize: int = 1, progress: bool = False, expected: Optional[float] = None,
            resources: Optional[dict] = None) -> Iterator:
        """Like ``Executor.map``, but lazy: at most ``max_pending`` items in flight.

        The first window is submitted at once; each result taken lets one more
        item in, so a map over ten million items holds a bounded number.
        ``progress=True`` shows the results taken so far on stderr, with rate
        and ETA (the total is known when every iterable has a length).
        ``expected``: the seconds each item takes; ``resources``: what each
        item (each chunk) needs (see ``submit``).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if progress:
            inner = self.map(fn, *iterables, timeout=timeout, chunksize=chunksize, expected=expected,
                             resources=resources)
            return with_progress(inner, total_of(iterables))  # type: ignore[arg-type]
        end = None if timeout is None else time.monotonic() + timeout
        items = zip(*iterables)
        if chunksize > 1:
            chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
            each = None if expected is None else expected * chunksize
            source = (self.submit(_run_chunk, fn, chunk, expected=each, resources=resources)
                      for chunk in chunks)
            window_size = max(1, self.max_pending // chunksize)
        else:
            source = (self.submit(fn, *args, expected=expected, resources=resources) for args in items)
            window_size = self.max_pending
        window = deque(itertools.islice(source, window_size))
        return self._results(window, source, end, chunked=chunksize > 1)

    def submit_command(self, command: Command, *, timeout: Optional[float] = None, attempts: int = 1,
                       check: bool = False, **options: Any) -> futures.Future:
        """Run a program on a worker (a list: program and arguments; a string: a
        shell line): the future's result is its ``subprocess.CompletedProcess``,
        output captured (``cw.commands``); ``options``: ``submit_call``'s."""
        return self.submit_call(run_command, (command, timeout, attempts, check), **options)

    def submit_async(self, fn: Callable, /, *args: Any, **kwargs: Any) -> "asyncio.Future":
        """``submit`` for asyncio: ``await executor.submit_async(fn, x)``. The
        result reaches the event loop through ``call_soon_threadsafe``: cw's
        I/O thread never runs on the loop, nor blocks it."""
        loop = asyncio.get_running_loop()  # first: outside a running loop, nothing is sent
        return asyncio.wrap_future(self.submit(fn, *args, **kwargs), loop=loop)

    def map_async(self, fn: Callable, *iterables: Iterable, chunksize: int = 1,
                  expected: Optional[float] = None) -> AsyncIterator:
        """``async for result in executor.map_async(fn, items)``: the results
        in order, at most ``max_pending`` items (or chunks) in flight; leaving
        the loop early cancels what is still queued (``cw.client.aio``)."""
        from .aio import map_async

        return map_async(self, fn, iterables, chunksize, expected, _run_chunk)

    @staticmethod
    def _results(window: deque, source: Iterator, end: Optional[float], chunked: bool) -> Iterator:
        """The results in order. Holds none it yielded (CPython issue 14406):
        a caller that drops a result frees it. So no local names a result or
        its future across a ``yield``, and a chunk's list is emptied as it goes."""
        try:
            while window:
                if not chunked:
                    yield _next_result(window, source, end)
                    continue
                chunk = _next_result(window, source, end)
                chunk.reverse()  # popped from its end, each value leaves the list as it goes
                yield from itertools.starmap(chunk.pop, itertools.repeat((), len(chunk)))
        finally:
            for fut in window:
                fut.cancel()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if cancel_futures:
            for fut in list(self._futures.values()):
                fut.cancel()
        if wait:
            futures.wait(list(self._futures.values()))
        self._core.close(timeout=10)
        if self._journal is not None:
            log.info("journal %s: %d result(s) taken from it, %d kept in it", self._journal.path,
                     self._journal.hits, self._journal.kept)
            self._journal.close()

    # -- called in the I/O thread -------------------------------------------
    def _on_started(self, ids: list, worker: Optional[str]) -> None:
        for jid in ids:
            fut = self._futures.get(jid)
            if fut is not None:
                fut._started(worker)

    def _on_result(self, jid: int, status: Status, payload: tuple, error,
                   ran: Optional[float] = None, worker: Optional[str] = None) -> None:
        fut = self._futures.pop(jid, None)
        if fut is None or not fut._mark_running():
            return  # cancelled by the user meanwhile
        fut._finished(ran, worker)
        ok, value = _outcome(status, payload, error, jid)
        if ok and fut._cw_key is not None and self._journal is not None:
            try:
                self._journal.put(fut._cw_key, value)  # kept before anyone can see it, and exit
            except Exception:  # whatever the journal's trouble, the result still reaches its future
                log.exception("journal %s: a result was not kept", self._journal.path)
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _next_result(window: deque, source: Iterator, end: Optional[float]) -> Any:
    """Take the oldest future's result, letting one more item in; the future
    (which holds the result) is dropped when this returns."""
    fut = window.popleft()
    window.extend(itertools.islice(source, 1))
    return fut.result(None if end is None else max(0.0, end - time.monotonic()))


def _run_chunk(fn: Callable, chunk: list) -> list:
    return [fn(*args) for args in chunk]


class SlurmExecutor(ClusterExecutor):
    """A ``ClusterExecutor`` on the master of a cw cluster running under SLURM."""

    def __init__(self, cluster: Optional[str] = None, **kwargs: Any) -> None:
        host = kwargs.pop("host", None) or squeue.master_host(cluster, wait=True)
        super().__init__(host, cluster=cluster, **kwargs)
