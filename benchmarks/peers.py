"""Each system under test behind one small interface.

``start()`` brings up 2 workers; ``submit(fn, *args)`` returns an object with
``result()``; ``map(fn, items, chunksize)`` returns an iterator, or None where
the system has no chunked map; ``stop()`` tears everything down.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import tempfile
import time
from typing import Any, Callable, Iterable, Optional

WORKERS = 2


class System:
    name = ""
    module = ""  # the package that must be importable for it to run

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, fn: Callable, *args: Any) -> Any:
        raise NotImplementedError

    def gather(self, futures: list) -> list:
        return [f.result() for f in futures]

    def map(self, fn: Callable, items: Iterable, chunksize: int) -> Optional[Iterable]:
        return None

    def stop(self) -> None:
        raise NotImplementedError


def slug(name: str) -> str:
    """A system's name as ``--systems`` takes it: ``cw --insecure`` is cw-insecure."""
    return name.lower().replace(" --", "-").replace(" ", "-")


def installed(system: "System") -> bool:
    try:
        importlib.import_module(system.module)
        return True
    except ImportError:
        return False


def run_json(cmd: list, timeout: float, **run: Any) -> dict:
    """The last line of ``cmd``'s output, as JSON, from a fresh process;
    {"error": why} if it timed out or failed (``run``: more for
    subprocess.run, e.g. another tree's ``cwd`` and ``env``)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **run)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def round_trips(system: System, n: int) -> list[float]:
    """Seconds each of ``n`` sequential no-op jobs took, submit to result, sorted."""
    from workloads import noop

    lat = []
    for _ in range(n):
        t = time.perf_counter()
        system.submit(noop).result()
        lat.append(time.perf_counter() - t)
    return sorted(lat)


class _Executor(System):
    """A system that is a ``concurrent.futures.Executor`` (``self.ex``)."""

    ex: Any

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.ex.submit(fn, *args)

    def map(self, fn: Callable, items: Iterable, chunksize: int) -> Optional[Iterable]:
        return self.ex.map(fn, items, chunksize=chunksize)


class CW(_Executor):
    module = "cw"

    def __init__(self, insecure: bool = False) -> None:
        self.insecure = insecure
        self.name = "cw --insecure" if insecure else "cw"

    def start(self) -> None:
        import cw
        from cw.client import ClusterExecutor

        os.environ["CW_HOME"] = tempfile.mkdtemp(prefix="cw-bench-")
        cw.start(WORKERS, launcher="local", port=0, insecure=self.insecure)
        self.ex = ClusterExecutor(insecure=self.insecure, max_pending=100_000)

    def stop(self) -> None:
        import cw

        self.ex.shutdown()
        cw.stop(launcher="local")
        from workloads import forget_home

        forget_home(os.environ["CW_HOME"])


class CWAcrossHosts(CW):
    """cw as on a cluster, where client and workers share no memory: no
    ``/dev/shm`` (CW_SHM=0), so big buffers take the direct path
    (cw.direct), or with ``via_master`` (CW_DIRECT=0) the master's."""

    def __init__(self, via_master: bool = False) -> None:
        super().__init__()
        self.via_master = via_master
        self.name = "cw across hosts via master" if via_master else "cw across hosts"

    def start(self) -> None:
        os.environ["CW_SHM"] = "0"  # read when cw first asks: before anything starts
        os.environ["CW_DIRECT"] = "0" if self.via_master else "1"
        super().start()


class Pool(_Executor):
    """concurrent.futures.ProcessPoolExecutor, or loky's."""

    def __init__(self, loky: bool = False) -> None:
        self.loky = loky
        self.name = "loky" if loky else "ProcessPoolExecutor"
        self.module = "loky" if loky else "concurrent"

    def start(self) -> None:
        if self.loky:
            import loky

            self.ex = loky.ProcessPoolExecutor(WORKERS)
        else:
            from concurrent.futures import ProcessPoolExecutor

            self.ex = ProcessPoolExecutor(WORKERS)

    def stop(self) -> None:
        self.ex.shutdown()


class Dask(System):
    name = "Dask distributed"
    module = "distributed"

    def start(self) -> None:
        from distributed import Client, LocalCluster

        for name in ("distributed", "tornado", "bokeh"):
            logging.getLogger(name).setLevel(logging.ERROR)
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                    dashboard_address=None)
        self.client = Client(self.cluster)

    def submit(self, fn: Callable, *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def gather(self, futures: list) -> list:
        return self.client.gather(futures)

    def stop(self) -> None:
        self.client.close()
        self.cluster.close()


class _RayRef:
    def __init__(self, ref: Any) -> None:
        self.ref = ref

    def result(self) -> Any:
        import ray

        return ray.get(self.ref)


class Ray(System):
    name = "Ray"
    module = "ray"

    def start(self) -> None:
        import ray

        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=False)
        self.remotes: dict = {}

    def submit(self, fn: Callable, *args: Any) -> Any:
        import ray

        remote = self.remotes.get(fn)
        if remote is None:
            remote = self.remotes[fn] = ray.remote(fn)
        return _RayRef(remote.remote(*args))

    def gather(self, futures: list) -> list:
        import ray

        return ray.get([f.ref for f in futures])

    def stop(self) -> None:
        import ray

        ray.shutdown()


class IPyParallel(System):
    name = "ipyparallel"
    module = "ipyparallel"

    def start(self) -> None:
        import ipyparallel

        self.cluster = ipyparallel.Cluster(n=WORKERS, log_level=logging.ERROR)
        self.rc = self.cluster.start_and_connect_sync(activate=False)
        self.view = self.rc.load_balanced_view()

    def submit(self, fn: Callable, *args: Any) -> Any:
        return _IppResult(self.view.apply_async(fn, *args))

    def stop(self) -> None:
        self.rc.close()
        self.cluster.stop_cluster_sync()


class _IppResult:
    def __init__(self, ar: Any) -> None:
        self.ar = ar

    def result(self) -> Any:
        return self.ar.get()


def all_systems() -> list[System]:
    return [CW(), CW(insecure=True), CWAcrossHosts(), CWAcrossHosts(via_master=True), Pool(),
            Pool(loky=True), Dask(), Ray(), IPyParallel()]
