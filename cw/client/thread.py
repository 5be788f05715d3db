"""``ClientThread``: the original cluster-workers client, with callbacks."""
from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Hashable, Optional

from .. import blobs
from ..errors import MasterUnavailableError, RemoteException, WorkerLostError, remote_twin
from ..joberrors import error_text
from ..protocol import Status
from ..resources import request
from ..serialize import dumps_call
from ..share import Shared
from .executor import DEFAULT_MAX_PENDING, _connect, _Context, _outcome
from .iocore import IOCore
from .jobs import job_options
from .progress import Progress


class Client:
    """A connection to a cw master that sends jobs and hears their ends: the
    base of the original's client classes, usable on its own.

    ``connect()`` dials the master (a ``MasterUnavailableError`` if none
    answers); ``send_job(jobid, func, *args, **kwargs)`` sends a job (it
    blocks while ``max_pending`` are unfinished); ``completion(jobid,
    success, result)`` runs in the client's I/O thread as each job ends,
    with the value, or the job's exception (``RemoteException`` too); an
    exception it raises is what ``wait()`` raises. ``close()`` hangs up.
    """

    def __init__(self, host: Optional[str] = None, port: Optional[int] = None, *,
                 connect_timeout: float = 30, max_pending: int = DEFAULT_MAX_PENDING,
                 retries: int = 2, timeout: Optional[float] = None, cluster: Optional[str] = None,
                 insecure: Optional[bool] = None, heartbeat: float = 1.0, liveness: int = 10,
                 progress: bool = False) -> None:
        self.progress = Progress() if progress else None
        self.options = job_options(retries, timeout)
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

    def connect(self) -> None:
        self._core = _connect(self.host, self.port, self.cluster, self.insecure,
                              self.connect_timeout, self._on_result, lambda ids, worker: None,
                              self.heartbeat, self.liveness)
        self._context.connected(self._core)
        self.connection_ready()

    def connection_ready(self) -> None:
        """Called once connected: a hook for subclasses, as in the original."""

    def completion(self, jobid: Hashable, success: bool, result: Any) -> None:
        """A job ended (in the I/O thread): a hook for subclasses."""

    def send_job(self, jobid: Hashable, func: Callable, *args: Any, resources: Optional[dict] = None,
                 **kwargs: Any) -> None:
        """Send ``func(*args, **kwargs)``; ``resources``, cw's, is what it
        needs, e.g. ``{"gpus": 1}`` (``ClusterExecutor.submit``)."""
        if self._core is None:
            raise RuntimeError("call start() (or use `with ClientThread(...)`) before submit")
        need = request(resources)
        options = self.options if need is None else dict(self.options, resources=need)
        label = jobid if type(jobid) in (int, str) and len(str(jobid)) <= 80 else repr(jobid)[:80]
        call = dumps_call(func, args, kwargs, jobid, shared=self._core.shared, label=label)
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
            self._core.submit(jid, (self._context(), *call), options)
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
        """Block until every job sent has finished; raise the first error
        (once: a later ``wait()`` goes on, as the original's did)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._jobids or self.remote_exception is not None)
            failure, self.remote_exception = self.remote_exception, None
        if failure is not None:
            raise failure

    def close(self) -> None:
        if self._core is not None:
            self._core.close(timeout=10)
        if self.progress is not None:
            self.progress.close()

    def _on_result(self, jid: int, status: Status, payload: tuple, error,
                   ran: Optional[float] = None, worker: Optional[str] = None) -> None:
        jobid = self._jobids.get(jid)
        ok, value = _outcome(status, payload, error, jobid)
        failure = None
        try:
            self.completion(jobid, ok, value if ok else _as_remote(value, jobid))
        except Exception as e:  # the user's callback failed, or a job did: wait() raises it as is
            failure = e
        if self.progress is not None:
            self.progress.update()
        with self._cond:
            del self._jobids[jid]
            if failure is not None and self.remote_exception is None:
                self.remote_exception = failure
            self._cond.notify_all()


class BaseClientThread(threading.Thread, Client):
    """The original's client thread: a daemon ``threading.Thread`` holding a
    ``Client``; ``callback(jobid, success, result)`` for every job's end.

    ``start()`` returns once connected (or raises why it could not);
    ``start_job(jobid, func, *args, **kwargs)`` sends a job; ``stop()`` hangs
    up (jobs still running are abandoned), after which ``join()`` returns.
    """

    def __init__(self, callback: Callable[..., Any], host: Optional[str] = None,
                 port: Optional[int] = None, **options: Any) -> None:
        threading.Thread.__init__(self, name="cw-client-thread", daemon=True)
        Client.__init__(self, host, port, **options)
        self.callback = callback
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._failed: Optional[BaseException] = None

    def start(self) -> None:
        threading.Thread.start(self)
        self._ready.wait()
        if self._failed is not None:
            raise self._failed

    def run(self) -> None:
        try:
            self.connect()
        except BaseException as e:  # start() raises it in the caller's thread
            self._failed = e
        finally:
            self._ready.set()
        if self._failed is None:
            self._stopped.wait()

    def start_job(self, jobid: Hashable, func: Callable, *args: Any, **kwargs: Any) -> None:
        self.send_job(jobid, func, *args, **kwargs)

    def completion(self, jobid: Hashable, success: bool, result: Any) -> None:
        self.callback(jobid, success, result)

    def stop(self) -> None:
        self.close()
        self._stopped.set()

    def __enter__(self) -> "BaseClientThread":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            self.stop()
            if self.is_alive() and threading.current_thread() is not self:
                self.join()


class ClientThread(BaseClientThread):
    """The original cluster-workers client: submit jobs, get callbacks.

    ``callback(jobid, result)`` runs in the client's I/O thread for each
    successful job. The first failed job makes ``wait()`` raise its
    exception, a ``RemoteException`` holding the remote traceback and an
    instance of the job's own exception type. ``progress=True`` shows jobs
    finished out of those submitted on stderr, with rate and ETA.
    """

    def submit(self, jobid: Hashable, func: Callable, *args: Any, resources: Optional[dict] = None,
               **kwargs: Any) -> None:
        self.send_job(jobid, func, *args, resources=resources, **kwargs)

    def completion(self, jobid: Hashable, success: bool, result: Any) -> None:
        if not success:
            with self._cond:  # the first one is what wait() raises
                self.remote_exception = self.remote_exception or result
            return
        self.callback(jobid, result)


def _as_remote(exc: BaseException, jobid: Hashable) -> BaseException:
    """What ``wait()`` raises for a failed job: a ``RemoteException`` whose
    text is the remote traceback, as the original's, and an instance of the
    job's own exception type too, where it has one (``remote_twin``)."""
    original = getattr(exc, "_cw_original", None)
    if original is None and isinstance(exc, (RemoteException, MasterUnavailableError, WorkerLostError)):
        return exc
    text = f"job {jobid!r} failed:\n{error_text(exc)}"
    err = remote_twin(original if original is not None else exc, text, jobid)
    if not isinstance(err, RemoteException):
        err = RemoteException(text, jobid)
    err.args = (text,)
    err.__cause__ = exc.__cause__ if original is not None else exc
    return err
