#!/usr/bin/env python3
"""Square ten numbers on a cw cluster, with the original ClientThread API.

Starts a cluster of two workers (on SLURM when it is available, else local
processes), submits ten jobs, prints each result from a callback, and stops
the cluster.
"""
import cw
from cw.client import ClientThread


def square(n):
    return n * n


def callback(jobid, result):
    print(f"the square for job {jobid} is {result}")


def main():
    cw.start(2)
    try:
        client = ClientThread(callback)
        client.start()
        for i in range(10):
            client.submit(i, square, i)
        client.wait()
        client.stop()
    finally:
        cw.stop()


if __name__ == "__main__":
    main()
