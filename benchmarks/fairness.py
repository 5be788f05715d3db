#!/usr/bin/env python3
"""A quick client's round trip while another client's long jobs queue up.

    python benchmarks/fairness.py [--trips 20] [--long 0.4] [--jitter 0] [--tree PATH]

Starts a local cluster of 2 workers (1 executor each, the default
``--prefetch 1``, lanes off: ``CW_LANES=0``, so every job goes through the
master), then measures client B's sequential no-op round trips twice: with
the cluster idle, and while client A has 200 jobs of ``--long`` seconds
queued (each ``--long`` +- ``--jitter`` seconds, uniform: with no jitter
A's jobs on both executors start and end together). Prints each median and
90th percentile. ``--tree`` runs another checkout's cw (its directory goes
first on ``PYTHONPATH`` and is the working directory of every process), to
compare before and after.

Without the workers' express spares (``cw worker --no-express``), B's wait
under load is at least what is left of the job running on the first
executor to free; with them, B's quick jobs run on a spare at once
(``cw.master.scheduler.dispatch_express``).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def trips(ex, n: int) -> list[float]:
    from workloads import noop

    waits = []
    for _ in range(n):
        t = time.perf_counter()
        ex.submit(noop).result(60)
        waits.append(time.perf_counter() - t)
    return waits


def measure(args: argparse.Namespace) -> None:
    from workloads import sleep

    import cw
    from cw.client import ClusterExecutor

    cw.start(2, launcher="local", port=0)
    try:
        with ClusterExecutor(connect_timeout=30) as b:
            trips(b, 20)  # warm up: executors import, caches fill
            idle = trips(b, args.trips)
            with ClusterExecutor(connect_timeout=30) as a:
                lengths = [args.long + random.uniform(-args.jitter, args.jitter) for _ in range(200)]
                held = [a.submit(sleep, s) for s in lengths]
                while sum(f.running() for f in held) < 2:
                    time.sleep(0.01)
                loaded = trips(b, args.trips)
                for f in held:
                    f.cancel()
    finally:
        cw.stop(launcher="local")
    for name, waits in (("idle", idle), (f"A's {args.long:g} s jobs queued", loaded)):
        waits.sort()
        print(f"{name:32} median {statistics.median(waits) * 1000:8.1f} ms   "
              f"p90 {waits[int(0.9 * (len(waits) - 1))] * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=20, help="B's round trips, idle and loaded")
    parser.add_argument("--long", type=float, default=0.4, help="seconds each of A's jobs takes")
    parser.add_argument("--jitter", type=float, default=0.0, help="+- seconds on each of A's jobs")
    parser.add_argument("--tree", type=Path, default=HERE.parent,
                        help="the checkout whose cw to run [default: this one]")
    args = parser.parse_args()
    tree = str(args.tree.resolve())
    if os.environ.get("CW_FAIRNESS_TREE") != tree:  # again, with that cw first for every process
        env = {**os.environ, "CW_FAIRNESS_TREE": tree, "PYTHONPATH": os.pathsep.join([str(HERE), tree])}
        # From the tree: ``python -m cw.worker`` looks in its working directory first.
        sys.exit(subprocess.call([sys.executable, __file__, *sys.argv[1:]], env=env, cwd=tree))
    os.environ["CW_LANES"] = "0"  # read by the workers cw.start spawns
    os.environ["CW_HOME"] = home = tempfile.mkdtemp(prefix="cw-fairness-")
    try:
        measure(args)
    finally:
        from workloads import forget_home

        forget_home(home)


if __name__ == "__main__":
    main()
