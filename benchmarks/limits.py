"""cw's memory and scale figures (suites ``memory`` and ``scale`` of bench.py)."""
from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import psutil
from workloads import forget_home, noop

import cw
from cw.client import ClusterExecutor
from cw.cluster import cluster_dir, read_json
from cw.errors import MasterUnavailableError
from cw.launch import query_status, wait_until

HERE = Path(__file__).resolve().parent
MiB = 2**20


@contextlib.contextmanager
def cluster(nworkers: int) -> Iterator[psutil.Process]:
    """A local cluster with CURVE on; yields the master process."""
    os.environ["CW_HOME"] = tempfile.mkdtemp(prefix="cw-bench-")
    cw.start(nworkers, launcher="local", port=0)
    try:
        yield psutil.Process(read_json(cluster_dir() / "master.json")["pid"])
    finally:
        cw.stop(launcher="local")
        forget_home(os.environ["CW_HOME"])


class PeakRSS:
    """Samples processes' RSS in a thread; keeps each one's peak."""

    def __init__(self, **procs: psutil.Process) -> None:
        self.procs, self.peak = procs, {name: 0 for name in procs}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(0.05):
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], proc.memory_info().rss)

    def __enter__(self) -> "PeakRSS":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def map_memory(items: int = 10_000_000, chunksize: int = 1000) -> dict:
    with cluster(2) as master, ClusterExecutor() as ex:
        with PeakRSS(client=psutil.Process(), master=master) as rss:
            t = time.perf_counter()
            count = sum(1 for _ in ex.map(noop, (i for i in range(items)), chunksize=chunksize))
            seconds = time.perf_counter() - t
        assert count == items
    return {"items": items, "chunksize": chunksize, "jobs/s": items / seconds,
            "client peak RSS MiB": rss.peak["client"] / MiB, "master peak RSS MiB": rss.peak["master"] / MiB}


def queued_memory(jobs: int = 1_000_000) -> dict:
    """The master's RSS per queued job, beyond the bytes of the jobs themselves."""
    from cw.serialize import context_frame, dumps_call

    with cluster(0) as master:
        ex = ClusterExecutor(max_pending=jobs)
        ex.submit(noop).cancel()
        time.sleep(0.5)
        before = master.memory_info().rss
        for i in range(jobs):
            ex.submit(noop, i)
        wait_queued(ex, jobs)
        after = master.memory_info().rss
        ex.shutdown(wait=False)  # no worker will run them: the master drops them
    # Each job's own frame, and one context frame per SUBMIT of up to 1000 jobs.
    payload = sum(len(dumps_call(noop, (i,), {})[0]) for i in range(0, jobs, 1000)) * 1000
    payload += len(context_frame()) * (jobs // 1000)
    return {"queued jobs": jobs, "master RSS growth MiB": (after - before) / MiB,
            "payload MiB": payload / MiB, "bytes per job beyond payload": (after - before - payload) / jobs}


def wait_queued(ex: ClusterExecutor, jobs: int, timeout: float = 300) -> None:
    host, port = ex.address.split("//")[1].rsplit(":", 1)
    wait_status(host, int(port), lambda snap: snap["queued"] >= jobs, "the master did not queue every job",
                timeout)


def wait_status(host: str, port: int, done: Callable[[dict], bool], what: str, timeout: float) -> None:
    """Poll the master's STATUS until ``done(snapshot)``; a master busy (a thousand
    handshakes, a million jobs) may answer late, which is no failure."""
    def check() -> Optional[dict]:
        try:
            snap = query_status(host, port, timeout=30)
        except MasterUnavailableError:
            return None
        return snap if done(snap) else None

    if wait_until(check, timeout, poll=0.2) is None:
        raise TimeoutError(f"{what} within {timeout:g} s")


def memory_suite() -> dict:
    print("  memory: map over 10,000,000 items ...", file=sys.stderr, flush=True)
    result = {"map": map_memory()}
    print("  memory: 1,000,000 queued jobs ...", file=sys.stderr, flush=True)
    result["queue"] = queued_memory()
    return result


def print_memory(result: dict) -> None:
    m, q = result["map"], result["queue"]
    print(f"\nmap over a generator of {m['items']:,} no-op items (chunksize {m['chunksize']}): "
          f"{m['jobs/s']:,.0f} items/s; peak RSS client {m['client peak RSS MiB']:.0f} MiB, "
          f"master {m['master peak RSS MiB']:.0f} MiB")
    print(f"{q['queued jobs']:,} queued jobs: master RSS +{q['master RSS growth MiB']:.0f} MiB, of which "
          f"payload {q['payload MiB']:.0f} MiB: {q['bytes per job beyond payload']:.0f} bytes a job more")


def dispatch_rate(executors: int, jobs: int) -> dict:
    """No-op jobs per second through a master serving ``executors`` light
    executors; its RSS after, and how long a ``cw status`` query takes."""
    with cluster(0) as master:
        port = read_json(cluster_dir() / "master.json")["port"]
        per_process = 250
        light = str(HERE / "light_executors.py")
        procs = [subprocess.Popen([sys.executable, light, str(port), str(min(per_process, executors - i))])
                 for i in range(0, executors, per_process)]
        try:
            wait_registered(port, executors, timeout=max(180, executors / 20))
            with ClusterExecutor(max_pending=jobs) as ex:
                cpu = sum(master.cpu_times()[:2])
                t = time.perf_counter()
                for f in [ex.submit(noop, i) for i in range(jobs)]:
                    f.result()
                wall = time.perf_counter() - t
                cpu = sum(master.cpu_times()[:2]) - cpu
            t = time.perf_counter()
            query_status("127.0.0.1", port)
            return {"jobs/s": jobs / wall, "master RSS MiB": master.memory_info().rss / MiB,
                    "status ms": (time.perf_counter() - t) * 1e3, "master CPU %": 100 * cpu / wall,
                    "master µs/job": 1e6 * cpu / jobs}
        finally:
            for p in procs:
                p.kill()
                p.wait()


def wait_registered(port: int, executors: int, timeout: float = 180) -> None:
    wait_status("127.0.0.1", port, lambda snap: len(snap["executors"]) >= executors,
                f"{executors} light executors did not register", timeout)


def scale_suite(repeat: int = 3, jobs: int = 20_000) -> dict:
    cases = {"2 executors": (2, jobs), "1000 executors": (1000, jobs), "10000 executors": (10_000, jobs),
             "2 executors, 200,000 queued": (2, 200_000)}
    runs: dict = {name: [] for name in cases}
    for rep in range(repeat):
        print(f"  [{rep + 1}/{repeat}] scale ...", file=sys.stderr, flush=True)
        for name, (executors, count) in cases.items():
            runs[name].append(dispatch_rate(executors, count))
    medians = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in runs.items()}
    rate = {k: v["jobs/s"] for k, v in medians.items()}
    return {"runs": runs, "medians": medians,
            "1000 / 2 executors": rate["1000 executors"] / rate["2 executors"],
            "10000 / 2 executors": rate["10000 executors"] / rate["2 executors"],
            "200,000 / 20,000 queued": rate["2 executors, 200,000 queued"] / rate["2 executors"]}


def print_scale(result: dict) -> None:
    med = result["medians"]
    print("\ndispatch through the master to light executors (medians):")
    print(f"  {'':32} {'jobs/s':>10} {'master RSS':>12} {'cw status':>10} {'master CPU':>11} "
          f"{'CPU a job':>10}")
    for name, row in med.items():
        print(f"  {name:32} {row['jobs/s']:>10,.0f} {row['master RSS MiB']:>8.0f} MiB "
              f"{row['status ms']:>7.0f} ms {row['master CPU %']:>10.0f}% {row['master µs/job']:>7.0f} µs")
    print(f"  1,000 executors run at {result['1000 / 2 executors']:.0%} of the 2-executor rate, "
          f"10,000 at {result['10000 / 2 executors']:.0%}; "
          f"200,000 queued at {result['200,000 / 20,000 queued']:.0%} of 20,000")
