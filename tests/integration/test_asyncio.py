"""asyncio over ClusterExecutor (issue 28, item 4): awaitable submits, an
async map in order, and an event loop that keeps running while jobs do."""
import asyncio

import jobs
import pytest

from cw.client import ClusterExecutor
from cw.launch import query_status


def test_submit_async_and_map_async_on_real_workers(cluster):
    port = cluster(2)

    async def main():
        with ClusterExecutor("127.0.0.1", port, connect_timeout=20, max_pending=16) as ex:
            squares = await asyncio.gather(*(ex.submit_async(pow, i, 2) for i in range(50)))
            assert squares == [i * i for i in range(50)]
            ordered = [x async for x in ex.map_async(pow, range(200), [3] * 200)]
            assert ordered == [i ** 3 for i in range(200)]
            chunked = [x async for x in ex.map_async(pow, range(100), [2] * 100, chunksize=7)]
            assert chunked == [i * i for i in range(100)]
            ticks = []

            async def ticker():
                while True:
                    await asyncio.sleep(0.01)
                    ticks.append(loop.time())

            loop = asyncio.get_running_loop()
            beat = asyncio.ensure_future(ticker())
            began = loop.time()
            thousand = await asyncio.gather(*(ex.submit_async(jobs.sleep, 0.002, i) for i in range(1000)))
            ended = loop.time()
            beat.cancel()
            assert thousand == list(range(1000))
            # The loop ran all along: ticks through the gather, no gap much past their 10 ms.
            marks = [began, *(t for t in ticks if t <= ended), ended]
            gap = max(b - a for a, b in zip(marks, marks[1:]))
            print(f"asyncio: 1,000 jobs in {ended - began:.2f} s, {len(marks) - 2} ticks, "
                  f"longest gap {gap * 1000:.0f} ms")
            assert len(marks) >= 10 and gap < 0.5, marks
            with pytest.raises(ZeroDivisionError):
                await ex.submit_async(divmod, 1, 0)
            async for x in ex.map_async(jobs.sleep, [0.01] * 100, range(100)):
                if x == 3:
                    break  # leaving early cancels what is still queued
        return True

    assert asyncio.run(main())
    with ClusterExecutor("127.0.0.1", port, connect_timeout=20) as ex:
        before = query_status("127.0.0.1", port)["counts"]["submitted"]
        with pytest.raises(RuntimeError):  # no running loop: said before anything is sent
            ex.submit_async(pow, 2, 3)
        assert query_status("127.0.0.1", port)["counts"]["submitted"] == before
