#!/usr/bin/env python3
"""Where a sequential round trip's time goes, hop by hop.

    python benchmarks/timeline.py [--trips 2000] [--spin SECONDS] [--awake]

Starts a local cluster (2 workers, CURVE on, as bench.py's cw) whose master and executors
note when each message leaves and arrives (timeline_hook/sitecustomize.py
wraps cw.protocol's send_frames and recv_frames; perf_counter is one clock
for every process on a host), runs sequential round trips of a no-op job,
and prints the median and 90th percentile of each segment:

    client ─SUBMIT─► master ─TASK─► executor ─RESULT─► master ─RESULTS─► client

An arrow between two processes is a network hop (both sides' ZeroMQ I/O
threads, CURVE, the receiver's wake-up); a step inside one is its Python
work. ``--spin`` sets the master's (see ``cw master --help``); ``--awake``
keeps the CPUs from sleeping (awake.py).
"""
from __future__ import annotations

import argparse
import atexit
import glob
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOOK = HERE / "timeline_hook"
sys.path.insert(0, str(HERE))
from awake import HELP as AWAKE_HELP  # noqa: E402
from awake import awake  # noqa: E402

_spec = importlib.util.spec_from_file_location("cw_timeline_hook", HOOK / "sitecustomize.py")
assert _spec is not None and _spec.loader is not None
hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hook)

# (process, direction, kind) of each point of a trip, in order.
POINTS = [("client", "s", "S"), ("master", "r", "S"), ("master", "s", "T"), ("executor", "r", "T"),
          ("executor", "s", "R"), ("master", "r", "R"), ("master", "s", "Z"), ("client", "r", "Z")]
LABELS = ["client sends SUBMIT", "master has it", "master sends TASK", "executor has it",
          "executor sends RESULT", "master has it", "master sends RESULTS", "client has it"]


def record(trips: int, out: str) -> list[float]:
    """Run ``trips`` round trips with every process noting its messages;
    return the client's own measure of each, in seconds."""
    hook.install("client", out)  # the client notes its messages too
    import peers

    system = peers.CW()
    system.start()
    try:
        peers.round_trips(system, 50)  # warm up
        return peers.round_trips(system, trips)
    finally:
        system.stop()


def events(out: str) -> list[tuple[float, str, str, str]]:
    found = []
    for path in glob.glob(os.path.join(out, "*.txt")):
        role = os.path.basename(path).split("-")[0]
        with open(path) as f:
            for line in f:
                t, direction, kind = line.split()
                found.append((float(t), role, direction, kind))
    return sorted(found)


def segments(evs: list) -> list[list[float]]:
    """For each trip, the time of each point of POINTS, found in order."""
    trips: list[list[float]] = []
    i = 0
    while i < len(evs):
        if evs[i][1:] != POINTS[0]:
            i += 1
            continue
        times, j = [], i
        for point in POINTS:
            while j < len(evs) and evs[j][1:] != point:
                j += 1
            if j == len(evs):
                return trips
            times.append(evs[j][0])
            j += 1
        trips.append(times)
        i = j
    return trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=2000, help="sequential round trips [2000]")
    parser.add_argument("--spin", type=float, help="the master's --spin, in seconds [its default]")
    parser.add_argument("--awake", action="store_true", help=AWAKE_HELP)
    args = parser.parse_args()
    if args.trips < 1:
        parser.error("--trips must be at least 1")
    with awake(args.awake):
        show(args)


def show(args: argparse.Namespace) -> None:
    out = tempfile.mkdtemp(prefix="cw-timeline-")
    os.environ["CW_TIMELINE_DIR"] = out
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOK), str(HERE),
                                                             os.environ.get("PYTHONPATH")]))
    if args.spin is not None:
        os.environ["CW_MASTER_SPIN"] = str(args.spin)
    # The four hops through the master are what it times: a sequential
    # caller's jobs would otherwise take a lane (two hops, no master).
    os.environ["CW_LANES"] = "0"
    try:
        lat = record(args.trips, out)
        hook.flush()
        atexit.unregister(hook.flush)
        trips = segments(events(out))[-args.trips:]  # not the warm-up
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not trips:
        sys.exit("no complete round trip was recorded")
    print(f"{len(trips)} round trips; the client measured a median of "
          f"{statistics.median(lat) * 1e3:.3f} ms\n")
    print(f"{'segment':52}{'median us':>11}{'p90 us':>9}")
    for k in range(len(POINTS) - 1):
        _row(f"{LABELS[k]} -> {LABELS[k + 1]}", [t[k + 1] - t[k] for t in trips])
    _row("client has RESULTS -> client sends next SUBMIT",
         [b[0] - a[-1] for a, b in zip(trips, trips[1:])])
    import floor

    bare = floor.round_trips(args.trips)["latency median"]
    print(f"\nthe same four hops through a bare pyzmq broker (floor.py), no Python work: "
          f"{bare * 1e3:.1f} us a round trip")


def _row(label: str, seconds: list[float]) -> None:
    us = sorted(s * 1e6 for s in seconds)
    print(f"{label:52}{statistics.median(us):11.1f}{us[int(len(us) * 0.9)]:9.1f}")


if __name__ == "__main__":
    main()
