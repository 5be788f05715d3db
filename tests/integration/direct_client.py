"""A client on "another host" (run with CW_SHM=0): ``python direct_client.py
HOST PORT N`` sweeps N jobs of a function closing over a fresh 4 MB array, then
echoes a fresh 3 MiB array; prints one JSON line: whether the sum is right, whether the echo
came back equal, and the direct path's counters (cw.direct.counts). Log
records go to stderr, so a test can read the warnings."""
import json
import logging
import sys

import numpy

from cw import direct
from cw.client import ClusterExecutor


def make_model(table):
    def simulate(p):
        return float(table[p % len(table)]) + p

    return simulate


def echo(a):
    return a


def main(host: str, port: int, n: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rng = numpy.random.default_rng()
    table = numpy.arange(4 << 20 >> 3, dtype=numpy.float64) + rng.integers(1 << 20)  # new bytes each run
    simulate = make_model(table)
    with ClusterExecutor(host, port, connect_timeout=30) as ex:
        total = sum(ex.map(simulate, range(n)))
        data = rng.integers(0, 255, 3 << 20, dtype=numpy.uint8)
        back = ex.submit(echo, data).result(120)
    print(json.dumps({"ok": total == sum(map(simulate, range(n))), "echo": bool((back == data).all()),
                      "counts": direct.counts}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
