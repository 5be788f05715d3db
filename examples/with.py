#!/usr/bin/env python3
"""The square example with context managers: the cluster and the client
are both cleaned up however the block ends."""
import cw
from cw.client import ClientThread


def square(n):
    return n * n


def callback(jobid, result):
    print(f"the square for job {jobid} is {result}")


if __name__ == "__main__":
    with cw.allocate(2):
        with ClientThread(callback) as client:  # leaving the block waits for all jobs
            for i in range(10):
                client.submit(i, square, i)
