#!/usr/bin/env python3
"""What a sweep's journal (cw.journal) costs: appends, a reopen, lookups, memory.

    python benchmarks/journal.py [--entries 1000000] [--repeat 3]

Writes a journal of ``--entries`` results (each a small tuple, as a
parameter sweep returns), then, in a fresh process each time, reopens it
and looks up 100,000 of its keys and 100,000 it lacks. Prints, per run:
the append rate, the file's size, the reopen's seconds, the reopening
process's RSS growth (its index; the results stay on disk) and peak, and
the lookup rate; and the rate of ``call_key`` on a small call, which a
journaled ``submit`` adds. Median (min-max) over ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

REOPEN = """
import json, os, random, resource, sys, time
import psutil
from cw.journal import Journal
from journal import key_of
path, n = sys.argv[1], int(sys.argv[2])
rss = psutil.Process().memory_info().rss
start = time.perf_counter()
j = Journal(path)
opened = time.perf_counter() - start
grown = psutil.Process().memory_info().rss - rss
picks = random.Random(1).sample(range(n), min(n, 100_000))
start = time.perf_counter()
assert all(j.get(key_of(i))[0] for i in picks)
assert not any(j.get(key_of(n + i))[0] for i in picks)
looked = 2 * len(picks) / (time.perf_counter() - start)
print(json.dumps({"open_s": opened, "rss_mib": grown / 2**20, "lookups_s": looked,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def key_of(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()


def write(path: Path, n: int) -> float:
    from cw.journal import Journal

    j = Journal(path)
    start = time.perf_counter()
    for i in range(n):
        j.put(key_of(i), (i, i * 0.5, "ok"))
    took = time.perf_counter() - start
    j.close()
    return n / took


def reopen(path: Path, n: int) -> dict:
    done = subprocess.run([sys.executable, "-c", REOPEN, str(path), str(n)], capture_output=True, text=True,
                          cwd=HERE, env={**os.environ, "PYTHONPATH": f"{HERE.parent}:{HERE}"}, check=True)
    return json.loads(done.stdout)


def keys_per_second() -> float:
    from cw.journal import call_key, fingerprint

    def simulate(x, params):
        return x

    code = fingerprint(simulate)
    start = time.perf_counter()
    for i in range(20_000):
        call_key(simulate, (i, {"rate": 0.1, "steps": 100}), {}, code)
    return 20_000 / (time.perf_counter() - start)


def spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    runs: list[dict] = []
    for _ in range(opts.repeat):
        with tempfile.TemporaryDirectory(prefix="cw-journal-bench-") as tmp:
            path = Path(tmp) / "sweep.cwj"
            appends = write(path, opts.entries)
            runs.append({"appends_s": appends, "mib": path.stat().st_size / 2**20,
                         **reopen(path, opts.entries), "keys_s": keys_per_second()})
    print(f"journal of {opts.entries:,} results, {opts.repeat} run(s): median (min-max)")
    rows = [("appends", "appends_s", "{:,.0f}/s"), ("file", "mib", "{:.1f} MiB"),
            ("reopen", "open_s", "{:.2f} s"), ("RSS after reopen, growth", "rss_mib", "{:.1f} MiB"),
            ("peak RSS of the reopening process", "peak_mib", "{:.1f} MiB"),
            ("lookups (half hits, half misses)", "lookups_s", "{:,.0f}/s"),
            ("call_key, a small call", "keys_s", "{:,.0f}/s")]
    for label, field, fmt in rows:
        print(f"  {label:<36} {spread([r[field] for r in runs], fmt)}")


if __name__ == "__main__":
    main()
