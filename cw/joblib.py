"""joblib on a cw cluster: ``import cw.joblib``, then ``with
joblib.parallel_config(backend="cw"):`` runs ``joblib.Parallel`` batches as
cw jobs, so scikit-learn's ``GridSearchCV(n_jobs=-1)`` or
``cross_val_score(..., n_jobs=-1)`` use the cluster.

Importing this module registers the backend "cw" with joblib (an optional
dependency: ``pip install 'cw[joblib]'``). ``n_jobs=-1`` means the
cluster's executors, as its master counts them when the ``Parallel`` call
starts (``-2``: all but one, as joblib counts); a positive ``n_jobs`` is
how many batches are in flight at once. joblib sizes its batches from
their run times (``AutoBatchingMixin``), so many tiny tasks travel as few
jobs. Options go to ``parallel_config(backend="cw", cluster=...)`` or
``executor=`` (a ``ClusterExecutor`` of yours, kept open); otherwise the
backend opens one per ``Parallel`` call, found as clients find their
master, and closes it after. Inside a job, nested ``Parallel`` calls run
sequentially.
"""
from __future__ import annotations

from typing import Any, Optional

try:
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend
    from joblib.parallel import register_parallel_backend
except ImportError as e:  # pragma: no cover - said in one line to whoever imports us
    raise ImportError("cw.joblib needs joblib: pip install 'cw[joblib]' (or joblib)") from e

from .client import ClusterExecutor


class CWBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend "cw": each batch of tasks is one job on the cluster."""

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, *, executor: Optional[ClusterExecutor] = None, cluster: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.given = executor
        self.cluster = cluster
        self.executor: Optional[ClusterExecutor] = executor
        self.futures: set = set()

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is not None and n_jobs > 0:
            return n_jobs
        executors = self._executors()
        return max(1, executors + 1 + (n_jobs if n_jobs is not None else -1))

    def _executors(self) -> int:
        """The executors the master knows (express spares not counted)."""
        from .launch import query_status

        executor = self.executor or ClusterExecutor(cluster=self.cluster)
        try:
            host, port = executor.address.removeprefix("tcp://").rsplit(":", 1)
            return len(query_status(host, int(port), cluster=self.cluster)["executors"])
        finally:
            if executor is not self.executor:
                executor.shutdown()

    def configure(self, n_jobs: int = 1, parallel: Any = None, **kwargs: Any) -> int:
        if self.executor is None:
            self.executor = ClusterExecutor(cluster=self.cluster)
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Any:
        assert self.executor is not None, "configure() opens the executor"
        future = self.executor.submit(func)
        self.futures.add(future)
        future.add_done_callback(self.futures.discard)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Any) -> Any:
        return future.result()

    def retrieve_result(self, out: Any, timeout: Optional[float] = None) -> Any:
        return out.result(timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: what is queued is cancelled (a running job runs to its end)."""
        for future in list(self.futures):
            future.cancel()
        self.futures.clear()
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        if self.executor is not None and self.executor is not self.given:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[Any, Optional[int]]:
        """Parallel calls inside a job run there, one after another."""
        return SequentialBackend(nesting_level=self.nesting_level + 1), None


register_parallel_backend("cw", CWBackend)

__all__ = ["CWBackend"]
