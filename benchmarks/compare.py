#!/usr/bin/env python3
"""cw against another checkout of cw, interleaved: did a change make it slower?

    git worktree add ../before HEAD~3          # the tree to compare against
    python benchmarks/compare.py ../before . --repeat 3

Runs the peers suite's workloads for ``cw`` (bench.py's child: no-op jobs
one by one, a chunked map, sequential round trips, a 64 MiB array, start-up)
from each tree in turn, ``before`` then ``after``, ``--repeat`` times, each
in a fresh process whose ``PYTHONPATH`` puts that tree's ``cw`` first, so
drift on a shared machine hits both alike. Prints each figure's median and
spread (min-max) per tree and the after/before ratio (above 1: after is
better), and writes every run to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import METRICS, run_child  # noqa: E402


def run(tree: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree / "benchmarks"), str(tree)])}
    return run_child("cw", args, str(tree / "benchmarks" / "bench.py"), env=env, cwd=tree)


def table(runs: dict) -> str:
    out = [f"{'figure':26}{'before (spread)':>34}{'after (spread)':>34}{'after/before':>14}"]
    for metric, (unit, higher) in METRICS.items():
        cells, medians = [], []
        for name in ("before", "after"):
            values = [r[metric] for r in runs[name] if metric in r]
            if not values:
                cells.append("-")
                medians.append(None)
                continue
            med = statistics.median(values)
            medians.append(med)
            cells.append(f"{med:,.2f} ({min(values):,.2f}-{max(values):,.2f})")
        a, b = medians
        ratio = "-" if not a or not b else f"{(b / a if higher else a / b):.2f}x"
        out.append(f"{metric + ' (' + unit + ')':26}{cells[0]:>34}{cells[1]:>34}{ratio:>14}")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the checkout to compare against")
    parser.add_argument("after", type=Path, help="the checkout with the change")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000, help="no-op jobs submitted one by one")
    parser.add_argument("--map", type=int, default=1_000_000, help="no-op jobs in the chunked map")
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("--json", type=Path, default=HERE / "results-compare.json")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for name, tree in trees.items():
        if not (tree / "cw" / "__init__.py").is_file() or not (tree / "benchmarks" / "bench.py").is_file():
            parser.error(f"{name}: {tree} is not a cw checkout with benchmarks/bench.py")
    runs: dict = {"before": [], "after": []}
    for rep in range(args.repeat):
        for name, tree in trees.items():
            print(f"  [{rep + 1}/{args.repeat}] {name} ({tree}) ...", file=sys.stderr, flush=True)
            result = run(tree, args)
            if "error" in result:
                print(f"    failed: {result['error']}", file=sys.stderr)
            runs[name].append(result)
    args.json.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "runs": runs}, indent=2))
    print(table(runs))


if __name__ == "__main__":
    main()
