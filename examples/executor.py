#!/usr/bin/env python3
"""ClusterExecutor is a concurrent.futures.Executor: map, submit, as_completed."""
from concurrent.futures import as_completed

import cw
from cw.client import ClusterExecutor


def square(n):
    return n * n


if __name__ == "__main__":
    with cw.allocate(2), ClusterExecutor() as executor:
        # map is lazy and keeps at most max_pending jobs in flight.
        for n, result in zip(range(10), executor.map(square, range(10))):
            print(f"the square for job {n} is {result}")
        futures = {executor.submit(pow, 2, n): n for n in range(5)}
        for future in as_completed(futures):
            print(f"2**{futures[future]} = {future.result()}")
        # Many small jobs: batch them with chunksize.
        print("sum of squares below 100000:", sum(executor.map(square, range(100_000), chunksize=1000)))
