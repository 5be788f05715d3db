#!/usr/bin/env python3
"""How busy cw and its peers keep N executors on jobs of D ms: the efficiency suite.

    python benchmarks/efficiency.py                      # N = cores - 1 and 2, D = 1, 10, 100 ms
    python benchmarks/efficiency.py --executors 2 --ms 1,10 --systems cw,processpoolexecutor
    python benchmarks/efficiency.py --light 100,1000     # cw, light executors that sleep D
    python benchmarks/bench.py --suite efficiency        # the same, beside the other suites

Each job busy-waits D (a CPU-bound job: N should not exceed the cores), and
M jobs (about 2 s of work per executor, at least 20 each) are submitted one
by one (``submit``, then every result) and through ``map`` (chunk size 1),
each system in a fresh process, the systems taking turns. Efficiency is
(M·D/N) / wall: 100% means every executor ran a job at every moment.

``--light``: cw's master with N light executors (``light_executors.py
--delay``, 250 to a process), each of which answers a job D after it gets
it, doing nothing meanwhile; so N can exceed the cores by far, and what is
measured is the dispatch: the master's and the client's capacity.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(HERE.parent),
                                                         os.environ.get("PYTHONPATH")]))

import peers  # noqa: E402
from workloads import busy, noop  # noqa: E402

SYSTEMS = ("cw", "processpoolexecutor", "loky", "dask-distributed", "ray")
WORK_SECONDS = 2.0  # of work per executor in one measurement
MAX_JOBS = 40_000  # light executors: at most this many jobs a measurement (1,000 of 1 ms need 1M/s)


def jobs_for(executors: int, ms: float) -> int:
    return max(20 * executors, round(WORK_SECONDS * executors * 1000 / ms))


def measure(system: Any, executors: int, ms_list: list, mode: str) -> dict:
    """Efficiency of ``system`` (started) at each D, submitting by ``mode``."""
    out = {}
    for ms in ms_list:
        jobs = jobs_for(executors, ms)
        system.gather([system.submit(busy, ms) for _ in range(2 * executors)])  # warm, and costs known
        t = time.perf_counter()
        if mode == "submit":
            system.gather([system.submit(busy, ms) for _ in range(jobs)])
        else:
            results = system.map(busy, [ms] * jobs, 1)
            if results is None:
                continue
            assert sum(1 for _ in results) == jobs
        wall = time.perf_counter() - t
        out[str(ms)] = {"jobs": jobs, "wall": wall, "efficiency": jobs * ms / 1000 / executors / wall}
    return out


def child(name: str, executors: int, ms_list: list) -> None:
    peers.WORKERS = executors
    system = system_named(name)
    system.start()
    try:
        system.submit(noop, 0).result()
        print(json.dumps({mode: measure(system, executors, ms_list, mode) for mode in ("submit", "map")}))
    finally:
        system.stop()


def light_child(executors: int, ms_list: list) -> None:
    """cw with ``executors`` light executors that sleep D per job."""
    from limits import cluster, wait_registered

    from cw.client import ClusterExecutor
    from cw.cluster import cluster_dir, read_json

    out: dict = {"submit": {}, "map": {}}
    for ms in ms_list:
        with cluster(0):
            port = read_json(cluster_dir() / "master.json")["port"]
            light = str(HERE / "light_executors.py")
            procs = [subprocess.Popen([sys.executable, light, str(port), str(min(250, executors - i)),
                                       "--delay", str(ms)]) for i in range(0, executors, 250)]
            try:
                wait_registered(port, executors)
                jobs = min(MAX_JOBS, jobs_for(executors, ms))
                with ClusterExecutor(max_pending=jobs + 1) as ex:
                    for mode in ("submit", "map"):
                        t = time.perf_counter()
                        if mode == "submit":
                            for f in [ex.submit(noop, i) for i in range(jobs)]:
                                f.result()
                        else:
                            assert sum(1 for _ in ex.map(noop, range(jobs))) == jobs
                        wall = time.perf_counter() - t
                        out[mode][str(ms)] = {"jobs": jobs, "wall": wall,
                                              "efficiency": jobs * ms / 1000 / executors / wall}
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    print(json.dumps(out))


def system_named(name: str) -> peers.System:
    """The system ``--systems`` calls ``name`` (its slug)."""
    return next(s for s in peers.all_systems() if peers.slug(s.name) == name)


def suite(executors: list, ms_list: list, systems: list, light: list, repeat: int,
          timeout: float = 900) -> dict:
    """Every (system, N) ``repeat`` times, interleaved; medians and spreads."""
    ms_arg = ",".join(map(str, ms_list))
    cases = [(name, n) for n in executors for name in systems if peers.installed(system_named(name))]
    cases += [("cw light", n) for n in light]
    runs: dict = {f"{name}, N={n}": [] for name, n in cases}
    for rep in range(repeat):
        for name, n in cases:
            print(f"  [{rep + 1}/{repeat}] {name}, N={n} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--executors", str(n), "--ms", ms_arg]
            cmd += ["--light-child"] if name == "cw light" else ["--child", name]
            runs[f"{name}, N={n}"].append(peers.run_json(cmd, timeout))
    table: dict = {}
    for case, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            table[case] = {"error": rs[0]["error"]}
            continue
        table[case] = {}
        for mode in ("submit", "map"):
            for ms in map(str, ms_list):
                values = [r[mode][ms]["efficiency"] for r in ok if ms in r.get(mode, {})]
                if values:
                    table[case][f"{mode} {ms} ms"] = (statistics.median(values), min(values), max(values))
    return {"runs": runs, "table": table, "executors": executors, "ms": ms_list, "light": light}


def print_suite(result: dict) -> None:
    table = result["table"]
    columns = [f"{mode} {ms} ms" for mode in ("submit", "map") for ms in result["ms"]]
    w = max(map(len, table), default=10) + 2
    print("\nefficiency, (M·D/N)/wall: median (min-max) over the runs")
    print(f"{'system, executors':{w}}" + "".join(f"{c:>20}" for c in columns))
    for case, row in table.items():
        if "error" in row:
            print(f"{case:{w}}  failed: {row['error']}")
            continue
        cells = [row.get(c) for c in columns]
        print(f"{case:{w}}" + "".join(f"{_cell(c):>20}" for c in cells))
    for n in result["executors"]:
        cw_row = table.get(f"cw, N={n}", {})
        rivals = {case: row for case, row in table.items()
                  if case.endswith(f", N={n}") and not case.startswith("cw") and "error" not in row}
        if not cw_row or "error" in cw_row or not rivals:
            continue
        ratios = []
        for c in columns:
            best = max((row[c][0] for row in rivals.values() if c in row), default=None)
            if best and c in cw_row:
                ratios.append(f"{c}: {cw_row[c][0] / best:.2f}x")
        print(f"cw / the best peer, N={n}: " + ", ".join(ratios))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    med, low, high = value
    return f"{med:.0%} ({low:.0%}-{high:.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    cores = os.cpu_count() or 2
    parser.add_argument("--executors", default=",".join(map(str, sorted({max(1, cores - 1), 2}))),
                        help="comma-separated N (default: cores - 1, and 2)")
    parser.add_argument("--ms", default="1,10,100", help="comma-separated D, ms (default 1,10,100)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated, of: {', '.join(SYSTEMS)} (default: those installed)")
    parser.add_argument("--light", default="", help="comma-separated N of cw light executors, e.g. 100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "results-efficiency.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--light-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        executors = [int(x) for x in args.executors.split(",") if x.strip()]
        ms_list = [float(x) if "." in x else int(x) for x in args.ms.split(",") if x.strip()]
        light = [int(x) for x in args.light.split(",") if x.strip()]
    except ValueError as e:
        parser.error(f"expected comma-separated numbers: {e}")
    if not executors or min(executors) < 1 or not ms_list or min(ms_list) <= 0:
        parser.error("--executors and --ms need positive numbers")
    systems = [x.strip().lower() for x in args.systems.split(",") if x.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown system {', '.join(sorted(unknown))}; choose from: {', '.join(SYSTEMS)}")
    if args.child:
        return child(args.child, executors[0], ms_list)
    if args.light_child:
        return light_child(executors[0], ms_list)
    result = suite(executors, ms_list, systems, light, args.repeat)
    print_suite(result)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
