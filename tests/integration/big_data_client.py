"""A user's sweep over big data, run as its own process so that its peak RSS
is its own: ``python big_data_client.py PORT closure|argument|shared N``; prints
one JSON line: the results' checksum, the peak RSS in MiB and
the direct path's counters (cw.direct)."""
import json
import resource
import sys

import numpy

from cw import direct
from cw.client import ClusterExecutor

MB50 = 50 * 1024 * 1024 // 8


def make_model(table):
    def simulate(p):
        return float(table[p % len(table)]) + p

    return simulate


def lookup(table, p):
    return float(table[p % len(table)]) + p


def main(port: int, how: str, n: int) -> None:
    table = numpy.arange(MB50, dtype=numpy.float64)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=30) as ex:
        if how == "closure":
            simulate = make_model(table)
            futures = [ex.submit(simulate, p) for p in range(n)]
        elif how == "shared":
            shared = ex.share(table)
            futures = [ex.submit(lookup, shared, p) for p in range(n)]
        else:
            futures = [ex.submit(lookup, table, p) for p in range(n)]
        total = sum(f.result(300) for f in futures)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"sum": total, "peak_mib": peak, "direct": direct.counts}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
