"""``ClientThread``: the original cluster-workers client, with callbacks."""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Hashable, Optional

from .. import blobs
from ..errors import MasterUnavailableError, RemoteException, WorkerLostError
from ..protocol import Status
from ..serialize import dumps_call, error_text
from ..share import Shared
from .executor import DEFAULT_MAX_PENDING, _connect, _Context, _options, _outcome
from .iocore import IOCore
from .progress import Progress


class ClientThread:
    """The original cluster-workers client: submit jobs, get callbacks.

    ``callback(jobid, result)`` runs in the client's I/O thread for each
    successful job. The first failed job makes ``wait()`` raise
    ``RemoteException`` holding the remote traceback. ``progress=True``
    shows jobs finished out of those submitted on stderr, with rate and ETA.
    """

    def __init__(self, callback: Callable[[Hashable, Any], Any], host: Optional[str] = None,
                 port: Optional[int] = None, *, connect_timeout: float = 30,
                 max_pending: int = DEFAULT_MAX_PENDING, retries: int = 2,
                 timeout: Optional[float] = None, cluster: Optional[str] = None,
                 insecure: Optional[bool] = None, heartbeat: float = 1.0,
                 liveness: int = 10, progress: bool = False) -> None:
        self.callback = callback
        self.progress = Progress() if progress else None
        self.options = _options(retries, timeout)
        self.heartbeat, self.liveness = heartbeat, liveness
        self.insecure = insecure
        self.host, self.port, self.cluster = host, port, cluster
        self.connect_timeout = connect_timeout
        self.max_pending = max_pending
        self.remote_exception: Optional[BaseException] = None
        self._jobids: dict[int, Hashable] = {}
        self._ids = itertools.count(1)
        self._context = _Context()
        self._cond = threading.Condition()
        self._core: Optional[IOCore] = None

    def start(self) -> None:
        self._core = _connect(self.host, self.port, self.cluster, self.insecure,
                              self.connect_timeout, self._on_result, lambda ids, worker: None,
                              self.heartbeat, self.liveness)
        self._context.connected(self._core)

    def submit(self, jobid: Hashable, func: Callable, *args: Any, **kwargs: Any) -> None:
        if self._core is None:
            raise RuntimeError("call start() (or use `with ClientThread(...)`) before submit")
        call = dumps_call(func, args, kwargs, jobid, shared=self._core.shared)
        with self._cond:
            # Back-pressure, except inside a callback: blocking the I/O thread
            # would stop the very results that free the window.
            if threading.current_thread() is not self._core:
                self._cond.wait_for(lambda: len(self._jobids) < self.max_pending)
            jid = next(self._ids)
            self._jobids[jid] = jobid
        if self.progress is not None:
            self.progress.add()
        try:
            self._core.submit(jid, (self._context(), *call), self.options)
        except BaseException:
            with self._cond:
                del self._jobids[jid]
            blobs.store.let_go((b"", *call))  # never held: no result will let it go
            raise

    @staticmethod
    def share(obj: Any) -> Shared:
        """Place ``obj`` once for many jobs (as ``ClusterExecutor.share``)."""
        return Shared(obj)

    def wait(self) -> None:
        """Block until every submitted job has finished; raise the first error."""
        with self._cond:
            self._cond.wait_for(lambda: not self._jobids or self.remote_exception is not None)
            if self.remote_exception is not None:
                raise self.remote_exception

    def stop(self) -> None:
        if self._core is not None:
            self._core.close(timeout=10)
        if self.progress is not None:
            self.progress.close()

    def __enter__(self) -> "ClientThread":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self.stop()

    def _on_result(self, jid: int, status: Status, payload: tuple, error,
                   ran: Optional[float] = None, worker: Optional[str] = None) -> None:
        jobid = self._jobids.get(jid)
        ok, value = _outcome(status, payload, error, jobid)
        failure = None if ok else _as_remote(value, jobid)
        if ok:
            try:
                self.callback(jobid, value)
            except Exception as e:  # the user's callback failed: wait() raises it as is
                failure = e
        if self.progress is not None:
            self.progress.update()
        with self._cond:
            del self._jobids[jid]
            if failure is not None and self.remote_exception is None:
                self.remote_exception = failure
            self._cond.notify_all()


def _as_remote(exc: BaseException, jobid: Hashable) -> BaseException:
    if isinstance(exc, (RemoteException, MasterUnavailableError, WorkerLostError)):
        return exc
    err = RemoteException(f"job {jobid!r} failed:\n{error_text(exc)}", jobid)
    err.__cause__ = exc
    return err
