#!/usr/bin/env python3
"""cw against Dask, Ray, ipyparallel, loky and ProcessPoolExecutor, side by side.

    pip install -e '.[bench]'
    python benchmarks/bench.py                 # every suite, 3 repetitions
    python benchmarks/bench.py --suite peers --jobs 20000 --repeat 3
    python benchmarks/bench.py --suite peers --awake   # CPUs kept from sleeping (root)

Suites:
  peers   the same workloads on every installed system, 2 workers each:
          one submit per no-op job, a chunked map, sequential round trips,
          a 64 MiB numpy array in and out of a job (the same array each
          time, and one changed before each job: cw then moves it again),
          start-up to first result
  memory  cw's memory: map over a generator of 10,000,000 items (client and
          master RSS), and the master's cost per queued job
  scale   cw's dispatch rate with 1,000 and 10,000 registered executors, as a ratio of
          its rate with 2 (light executors packed into a few processes)
  efficiency  how busy N executors are kept on jobs of 1, 10, 100 ms, cw
          and its peers (efficiency.py: N = cores - 1 and 2; light
          executors N = 100, 1,000)

Each repetition of each system runs in a fresh process, the systems taking
turns, so drift on a shared machine hits them alike. The table shows medians
and cw's ratio to each system; everything goes to a JSON file as well. Its
last rows, marked "(floor)", are no system: the round trip of raw bytes
through a bare Python ZeroMQ broker, the least any brokered design pays on
this machine; the same with a client shaped like cw's (a thread receives,
a Future hands over); and with no broker at all (floor.py).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
# Workers of every system must import the job functions by name.
# This checkout's cw as well, whatever cw pip installed.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(HERE.parent),
                                                         os.environ.get("PYTHONPATH")]))

import peers  # noqa: E402
from awake import HELP as AWAKE_HELP  # noqa: E402
from awake import awake, idle_settings  # noqa: E402
from workloads import echo, noop  # noqa: E402

METRICS = {  # name -> (unit, higher is better)
    "tasks/s": ("jobs/s", True),
    "map/s": ("jobs/s", True),
    "latency median": ("ms", False),
    "latency p99": ("ms", False),
    "64 MiB round trip": ("MiB/s", True),
    "64 MiB, changed": ("MiB/s", True),
    "start-up": ("s", False),
}


def measure(system: peers.System, jobs: int, mapped: int) -> dict:
    import numpy

    t = time.perf_counter()
    system.start()
    system.submit(noop, 0).result()
    out = {"start-up": time.perf_counter() - t}
    try:
        system.gather([system.submit(noop, i) for i in range(200)])  # warm up
        t = time.perf_counter()
        assert system.gather([system.submit(noop, i) for i in range(jobs)]) == list(range(jobs))
        out["tasks/s"] = jobs / (time.perf_counter() - t)
        t = time.perf_counter()
        it = system.map(noop, range(mapped), 1000)
        if it is not None:
            assert sum(1 for _ in it) == mapped
            out["map/s"] = mapped / (time.perf_counter() - t)
        lat = peers.round_trips(system, 300)
        out["latency median"] = statistics.median(lat) * 1e3
        out["latency p99"] = lat[int(len(lat) * 0.99)] * 1e3
        data = numpy.ones(64 << 20, dtype=numpy.uint8)
        for name, changed in (("64 MiB round trip", False), ("64 MiB, changed", True)):
            rates = []
            for i in range(5):  # the median: the first job on each worker imports numpy
                if changed:
                    data[0] = i + 2  # new bytes: nothing cached anywhere holds them
                t = time.perf_counter()
                back = system.submit(echo, data).result()
                rates.append(64 / (time.perf_counter() - t))
                assert back.nbytes == data.nbytes and back[0] == data[0]
                del back
            out[name] = statistics.median(rates)
    finally:
        system.stop()
    return out


# Not systems: what ZeroMQ alone allows here, by floor.py's shapes.
FLOORS = {"pyzmq broker (floor)": "broker", "pyzmq broker, cw's client (floor)": "handoff",
          "pyzmq, no broker (floor)": "direct"}


def child(name: str, jobs: int, mapped: int) -> None:
    if name in FLOORS:
        import floor

        print(json.dumps(floor.round_trips(shape=FLOORS[name])))
        return
    system = next(s for s in peers.all_systems() if s.name == name)
    print(json.dumps(measure(system, jobs, mapped)))


def run_child(name: str, args: argparse.Namespace, script: str = __file__, **run: Any) -> dict:
    """One system's measurements, from ``script --child`` in a fresh process
    (``run``: more for subprocess.run, e.g. another tree's ``cwd`` and ``env``)."""
    cmd = [sys.executable, script, "--child", name, "--jobs", str(args.jobs), "--map", str(args.map)]
    return peers.run_json(cmd, args.timeout, **run)


def peers_suite(args: argparse.Namespace) -> dict:
    names = [s.name for s in peers.all_systems() if peers.installed(s)] + list(FLOORS)
    if args.systems:
        names = [n for n in names if peers.slug(n) in args.systems or n in FLOORS]
    runs: dict = {name: [] for name in names}
    for rep in range(args.repeat):
        for name in names:
            print(f"  [{rep + 1}/{args.repeat}] {name} ...", file=sys.stderr, flush=True)
            runs[name].append(run_child(name, args))
    medians = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        medians[name] = {m: statistics.median(r[m] for r in ok) for m in METRICS if ok and m in ok[0]}
        if not ok:
            medians[name] = {"error": rs[0]["error"]}
    return {"runs": runs, "medians": medians}


def print_peers(result: dict) -> None:
    med = result["medians"]
    cw = med.get("cw", {})
    w = max(map(len, med), default=6) + 2
    print(f"\n{'system':{w}}" + "".join(f"{m:>18}" for m in METRICS))
    print(f"{'':{w}}" + "".join(f"{'(' + u + ')':>18}" for u, _ in METRICS.values()))
    for name, row in med.items():
        if "error" in row:
            print(f"{name:{w}}  failed: {row['error']}")
            continue
        print(f"{name:{w}}" + "".join(f"{_fmt(row.get(m)):>18}" for m in METRICS))
    print("\ncw's ratio to each (above 1: cw is better)")
    for name, row in med.items():
        if name == "cw" or "error" in row:
            continue
        cells = []
        for m, (_, higher) in METRICS.items():
            a, b = cw.get(m), row.get(m)
            cells.append("-" if not a or not b else f"{(a / b if higher else b / a):.2f}x")
        print(f"{name:{w}}" + "".join(f"{c:>18}" for c in cells))


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def machine() -> dict:
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["memory GiB"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, ValueError):
        pass
    versions = {}
    for mod in ("cw", "zmq", "distributed", "ray", "ipyparallel", "loky", "numpy"):
        try:
            versions[mod] = importlib.import_module(mod).__version__
        except Exception:
            pass
    info["versions"] = versions
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--suite", default="peers,memory,scale,efficiency",
                        help="comma-separated: peers, memory, scale, efficiency (default: all)")
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs submitted one by one")
    parser.add_argument("--map", type=int, default=1_000_000, help="no-op jobs in the chunked map")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", help="comma-separated systems of the peers suite (default: "
                        "all installed): " + ", ".join(peers.slug(s.name) for s in peers.all_systems()))
    parser.add_argument("--timeout", type=float, default=900, help="seconds one system's run may take")
    parser.add_argument("--json", default=str(HERE / "results.json"), help="where to write the results")
    parser.add_argument("--awake", action="store_true", help=AWAKE_HELP)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.jobs, args.map)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = set(suites) - {"peers", "memory", "scale", "efficiency"}
    if unknown:
        parser.error(f"unknown suite {', '.join(sorted(unknown))}; "
                     "choose from: peers, memory, scale, efficiency")
    if args.systems is not None:
        known = [peers.slug(s.name) for s in peers.all_systems()]
        args.systems = [x.strip().lower() for x in args.systems.split(",") if x.strip()]
        unknown = set(args.systems) - set(known)
        if unknown or not args.systems:
            parser.error(f"unknown system {', '.join(sorted(unknown)) or '(none)'}; "
                         f"choose from: {', '.join(known)}")
    with awake(args.awake):
        run_suites(args, suites)


def compile_cw() -> None:
    """Compile cw's modules to bytecode, as ``pip install`` does.

    An editable install under PYTHONDONTWRITEBYTECODE (set on some
    machines, this one among them) has no bytecode, so every master, worker
    and executor of a run would compile cw anew as it starts: some 0.2 s of
    a local cluster's start-up here. The peers, installed normally, have
    theirs. (compileall writes it whatever that variable says.)
    """
    import compileall

    import cw

    compileall.compile_dir(os.path.dirname(cw.__file__), quiet=1)


def run_suites(args: argparse.Namespace, suites: list) -> None:
    compile_cw()
    report: dict = {"machine": {**machine(), "idle": idle_settings()},
                    "args": {k: v for k, v in vars(args).items() if k != "child"}}
    if args.awake:
        print("CPUs held awake (--awake)", file=sys.stderr)
    out = Path(args.json)
    if "peers" in suites:
        report["peers"] = peers_suite(args)
        print_peers(report["peers"])
        out.write_text(json.dumps(report, indent=2))  # after each suite: a later failure keeps it
    if "memory" in suites or "scale" in suites:
        import limits

        if "memory" in suites:
            report["memory"] = limits.memory_suite()
            limits.print_memory(report["memory"])
            out.write_text(json.dumps(report, indent=2))
        if "scale" in suites:
            report["scale"] = limits.scale_suite(args.repeat)
            limits.print_scale(report["scale"])
    if "efficiency" in suites:
        import efficiency

        cores = os.cpu_count() or 2
        report["efficiency"] = efficiency.suite(sorted({max(1, cores - 1), 2}), [1, 10, 100],
                                                list(efficiency.SYSTEMS), [100, 1000], args.repeat)
        efficiency.print_suite(report["efficiency"])
    out.write_text(json.dumps(report, indent=2))
    print(f"\nresults written to {out}")


if __name__ == "__main__":
    main()
