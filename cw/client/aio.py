"""asyncio over a ``ClusterExecutor``: ``submit_async`` and ``map_async``.

A job's result reaches the event loop through ``asyncio.wrap_future``, that
is ``call_soon_threadsafe`` from cw's I/O thread: no cw code runs on the
loop but the submits (pickling, in the caller's thread, as with ``submit``),
and nothing blocks it.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any, AsyncIterator, Callable, Iterable, Optional


async def map_async(executor: Any, fn: Callable, iterables: tuple[Iterable, ...], chunksize: int,
                    expected: Optional[float], run_chunk: Callable) -> AsyncIterator:
    """The results of ``fn`` over ``iterables``, in order; see ``ClusterExecutor.map_async``."""
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1")
    items = zip(*iterables)
    if chunksize > 1:
        each = None if expected is None else expected * chunksize
        chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
        calls: Iterable = ((run_chunk, (fn, chunk), each) for chunk in chunks)
    else:
        calls = ((fn, args, expected) for args in items)
    window: deque = deque()

    def more(n: int) -> None:
        for call, args, seconds in itertools.islice(calls, n):
            window.append(asyncio.wrap_future(executor.submit_call(call, args, expected=seconds)))

    more(max(1, executor.max_pending // chunksize))
    try:
        while window:
            done = await window.popleft()
            more(1)
            for value in done if chunksize > 1 else (done,):
                yield value
    finally:
        for fut in window:
            fut.cancel()  # and, through wrap_future, the job
