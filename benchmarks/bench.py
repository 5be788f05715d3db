#!/usr/bin/env python3
"""Side-by-side benchmarks: cw with CURVE on and off, and ProcessPoolExecutor.

    python benchmarks/bench.py [--jobs 5000] [--repeat 3]

Every system runs on this machine with 2 workers, in the same run, and the
table reports medians of ``--repeat`` runs plus ratios, because these
machines are shared and noisy: absolute numbers vary, ratios much less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cw.mp  # noqa: E402
from cw.client import ClusterExecutor  # noqa: E402


def noop(x=None):
    return x


def echo(data):
    return data


def measure(executor, jobs: int) -> dict:
    t = time.perf_counter()
    futs = [executor.submit(noop, i) for i in range(jobs)]
    for f in futs:
        f.result()
    throughput = jobs / (time.perf_counter() - t)
    t = time.perf_counter()
    n = 20 * jobs
    assert sum(1 for _ in executor.map(noop, range(n), chunksize=1000)) == n
    mapped = n / (time.perf_counter() - t)
    lat = []
    for _ in range(300):
        t = time.perf_counter()
        executor.submit(noop).result()
        lat.append(time.perf_counter() - t)
    lat.sort()
    import numpy

    data = numpy.ones(64 * 2**20, dtype=numpy.uint8)
    t = time.perf_counter()
    back = executor.submit(echo, data).result()
    payload = 64 / (time.perf_counter() - t)
    assert back.nbytes == data.nbytes
    return {"tasks/s": throughput, "map tasks/s": mapped, "latency ms": lat[len(lat) // 2] * 1e3,
            "p99 ms": lat[int(len(lat) * 0.99)] * 1e3, "64MiB MiB/s": payload}


def run_cw(insecure: bool, jobs: int) -> dict:
    home = tempfile.mkdtemp(prefix="cw-bench-")
    os.environ["CW_HOME"] = home
    cw.mp.start(2, port=0, insecure=insecure)
    try:
        with ClusterExecutor(insecure=insecure, max_pending=100_000) as ex:
            measure(ex, 200)  # warm up
            return measure(ex, jobs)
    finally:
        cw.mp.stop()


def run_pool(jobs: int) -> dict:
    with ProcessPoolExecutor(2) as ex:
        measure(ex, 200)
        return measure(ex, jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    systems = {"cw (CURVE on)": lambda: run_cw(False, args.jobs),
               "cw (--insecure)": lambda: run_cw(True, args.jobs),
               "ProcessPoolExecutor": lambda: run_pool(args.jobs)}
    runs: dict = {name: [] for name in systems}
    for _ in range(args.repeat):  # interleaved, so drift hits every system alike
        for name, run in systems.items():
            runs[name].append(run())
    table = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    cols = list(next(iter(table.values())))
    print(f"{'system':22}" + "".join(f"{c:>14}" for c in cols))
    for name, row in table.items():
        print(f"{name:22}" + "".join(f"{row[c]:>14.1f}" for c in cols))
    on, off = table["cw (CURVE on)"], table["cw (--insecure)"]
    print(f"\nCURVE cost on no-op throughput: {100 * (1 - on['tasks/s'] / off['tasks/s']):.1f}% "
          f"(map: {100 * (1 - on['map tasks/s'] / off['map tasks/s']):.1f}%, "
          f"64 MiB payload: {100 * (1 - on['64MiB MiB/s'] / off['64MiB MiB/s']):.1f}%)")
    pool = table["ProcessPoolExecutor"]
    print(f"cw (CURVE on) / ProcessPoolExecutor no-op throughput: {on['tasks/s'] / pool['tasks/s']:.2f}x")


if __name__ == "__main__":
    main()
