#!/usr/bin/env python3
"""Big closure sweep: many jobs that all need one big array, side by side.

    python benchmarks/bigdata.py                    # 2,000 jobs, 50 MB, 3 rounds
    python benchmarks/bigdata.py --jobs 500 --mb 20 --repeat 5

Each job does 1 ms of work (a busy wait) and reads the array; 2 workers.
How each system is told about the array, as its documentation advises:

- cw (closure): ``ex.submit(make_model(table), p)``; nothing said: the
  closure's pickle is sent once per executor by reference (cw.blobs);
- cw (share): ``t = ex.share(table)``, then ``ex.submit(lookup, t, p)``;
- ProcessPoolExecutor: the array handed to each worker by ``initializer``;
- Dask: ``client.scatter(table, broadcast=True)``, the future passed to jobs;
- Ray: ``ray.put(table)``, the reference passed to jobs.

Each system runs in a fresh process, the rounds interleaved, so drift on a
shared machine hits all alike. Prints the median wall time of the sweep
(after start-up) with its spread (min-max), the client process's peak
RSS, and the most memory of its own (USS) any worker process holds at the
end (each job reads one element: a worker that copied the array holds all
of it; cw's executors map the host's one copy, and hold the pages they
read). Systems whose package is missing are skipped, saying so.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
# This checkout's cw, in the workers too, whatever cw pip installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(HERE.parent),
                                                         os.environ.get("PYTHONPATH")]))
WORKERS = 2
SYSTEMS = {"cw (closure)": "cw", "cw (share)": "cw", "ProcessPoolExecutor": "concurrent",
           "Dask (scatter)": "distributed", "Ray (put)": "ray"}

_table = None  # the worker's copy, for ProcessPoolExecutor's initializer


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def lookup(table, p):
    busy(0.001)
    return float(table[p % len(table)])


def make_model(table):
    def simulate(p):
        busy(0.001)
        return float(table[p % len(table)])

    return simulate


def _install(table) -> None:
    global _table
    _table = table


def pooled(p):
    return lookup(_table, p)


def largest_uss(procs) -> float:
    """The most memory of its own (USS, MiB) any of ``procs`` holds: a worker
    with its private copy of the array holds at least the array."""
    import psutil

    sizes = [0]
    for proc in procs:
        try:
            sizes.append(proc.memory_full_info().uss)
        except psutil.Error:
            pass
    return max(sizes) / 2**20


def descendants():
    import psutil

    return psutil.Process().children(recursive=True)


def cw_executors():
    import psutil

    from cw.cluster import cluster_dir, read_json

    port = str(read_json(cluster_dir() / "master.json")["port"])
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "cw.executor" in cmd and port in cmd:
            found.append(proc)
    return found


def run_cw(name: str, table, jobs: int) -> tuple:
    import cw
    from cw.client import ClusterExecutor

    os.environ["CW_HOME"] = tempfile.mkdtemp(prefix="cw-bench-")
    cw.start(WORKERS, launcher="local", port=0)
    try:
        with ClusterExecutor(max_pending=100_000) as ex:
            start = time.perf_counter()
            if name == "cw (closure)":
                simulate = make_model(table)
                futures = [ex.submit(simulate, p) for p in range(jobs)]
            else:
                shared = ex.share(table)
                futures = [ex.submit(lookup, shared, p) for p in range(jobs)]
            sum(f.result() for f in futures)
            return time.perf_counter() - start, largest_uss(cw_executors())
    finally:
        cw.stop(launcher="local")
        from workloads import forget_home

        forget_home(os.environ["CW_HOME"])


def run_pool(table, jobs: int) -> tuple:
    from concurrent.futures import ProcessPoolExecutor

    start = time.perf_counter()  # the array goes to the workers as they start: counted
    with ProcessPoolExecutor(WORKERS, initializer=_install, initargs=(table,)) as ex:
        futures = [ex.submit(pooled, p) for p in range(jobs)]
        sum(f.result() for f in futures)
        seconds = time.perf_counter() - start
        return seconds, largest_uss(descendants())


def run_dask(table, jobs: int) -> tuple:
    import logging

    from distributed import Client, LocalCluster

    for name in ("distributed", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        start = time.perf_counter()
        shared = client.scatter(table, broadcast=True)
        futures = [client.submit(lookup, shared, p, pure=False) for p in range(jobs)]
        sum(client.gather(futures))
        return time.perf_counter() - start, largest_uss(descendants())


def run_ray(table, jobs: int) -> tuple:
    import logging

    import ray

    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=False)
    try:
        remote = ray.remote(lookup)
        start = time.perf_counter()
        ref = ray.put(table)
        sum(ray.get([remote.remote(ref, p) for p in range(jobs)]))
        return time.perf_counter() - start, largest_uss(descendants())
    finally:
        ray.shutdown()


def child(name: str, jobs: int, mb: int) -> None:
    import numpy

    table = numpy.arange(mb * 1024 * 1024 // 8, dtype=numpy.float64)
    if name.startswith("cw"):
        seconds, worker = run_cw(name, table, jobs)
    elif name == "ProcessPoolExecutor":
        seconds, worker = run_pool(table, jobs)
    elif name.startswith("Dask"):
        seconds, worker = run_dask(table, jobs)
    else:
        seconds, worker = run_ray(table, jobs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "worker_uss_mib": worker}))


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs in the sweep [2000]")
    parser.add_argument("--mb", type=int, default=50, help="the array's size in MB [50]")
    parser.add_argument("--repeat", type=int, default=3, help="rounds, interleaved [3]")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take [900]")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.jobs, args.mb)
        return
    names = [n for n, module in SYSTEMS.items() if installed(module)]
    for n, module in SYSTEMS.items():
        if n not in names:
            print(f"skipped {n}: `{module}` is not installed", file=sys.stderr)
    runs: dict = {n: [] for n in names}
    for i in range(args.repeat):
        for name in names:
            print(f"  [{i + 1}/{args.repeat}] {name} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", name, "--jobs", str(args.jobs), "--mb", str(args.mb)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                out = done.stdout.strip().splitlines()
                runs[name].append(json.loads(out[-1]) if done.returncode == 0 and out else
                                  {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]})
            except subprocess.TimeoutExpired:
                runs[name].append({"error": f"timed out after {args.timeout:g} s"})
    print(f"big closure sweep: {args.jobs} jobs of 1 ms, one {args.mb} MB array, "
          f"{WORKERS} workers, {args.repeat} rounds")
    print(f"{'system':<22}{'wall s, median (min-max)':>28}{'client peak MiB':>18}{'worker USS MiB':>17}")
    for name, got in runs.items():
        ok = [r for r in got if "error" not in r]
        if not ok:
            print(f"{name:<22}{'failed: ' + got[-1]['error']:>46}")
            continue
        secs = [r["seconds"] for r in ok]
        wall = f"{statistics.median(secs):.2f} ({min(secs):.2f}-{max(secs):.2f})"
        print(f"{name:<22}{wall:>28}{max(r['peak_mib'] for r in ok):>18.0f}"
              f"{max(r['worker_uss_mib'] for r in ok):>17.0f}")


if __name__ == "__main__":
    main()
