#!/usr/bin/env python3
"""Estimate pi from random points, one job per batch of samples."""
import random

import cw
from cw.client import ClusterExecutor


def hits(seed, samples=200_000):
    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(samples))


if __name__ == "__main__":
    jobs = 40
    with cw.allocate(2), ClusterExecutor() as executor:
        inside = sum(executor.map(hits, range(jobs)))
    print(f"pi is about {4 * inside / (jobs * 200_000):.5f}")
