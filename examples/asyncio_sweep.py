#!/usr/bin/env python3
"""A parameter sweep from asyncio code: await single jobs, iterate over a map.

Starts a local cluster of two workers, awaits a few jobs side by side, then
consumes a map of 100 jobs with ``async for`` while the event loop keeps
serving other tasks (here, a heartbeat that prints), and stops the cluster.
"""
import asyncio
import math

import cw
from cw.client import ClusterExecutor


def simulate(rate):
    return sum(math.exp(-rate * t / 100) for t in range(10_000))


async def heartbeat():
    while True:
        await asyncio.sleep(0.5)
        print("the event loop is free")


async def main():
    with ClusterExecutor() as executor:
        first = await asyncio.gather(*(executor.submit_async(simulate, r) for r in (0.1, 0.2, 0.3)))
        print("three runs:", [round(x, 1) for x in first])
        beat = asyncio.ensure_future(heartbeat())
        best = max([x async for x in executor.map_async(simulate, [i / 100 for i in range(1, 101)])])
        beat.cancel()
        print("largest of 100:", round(best, 1))


if __name__ == "__main__":
    cw.start(2, launcher="local")
    try:
        asyncio.run(main())
    finally:
        cw.stop(launcher="local")
