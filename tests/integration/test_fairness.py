"""Fairness between clients on real processes: a client's quick jobs do
not wait behind another client's long jobs sent ahead to the executors
(prefetch pays for short jobs only: cw.master.scheduler)."""
import statistics
import time

import jobs
import pytest
from conftest import wait_for

from cw.client import ClusterExecutor
from cw.launch import query_status

LONG = 0.4  # seconds a job of client A takes
# A job of A that went to an executor before the master heard of B's job
# may start that much later there on a slow machine; an A job sent ahead
# (prefetched) starts when the one before it ends, anywhere in LONG.
SENT_BEFORE = 0.1


def test_quick_jobs_of_one_client_never_wait_behind_long_jobs_sent_ahead_for_another(cluster, monkeypatch):
    monkeypatch.setenv("CW_LANES", "0")  # B's jobs through the master, not down a lane
    port = cluster(2)  # 2 workers x 1 executor, the default --prefetch 1
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as a, \
            ClusterExecutor("127.0.0.1", port, connect_timeout=10) as b:
        long_jobs = [a.submit(jobs.span, LONG, ("a", i)) for i in range(200)]
        wait_for(lambda: sum(f.running() for f in long_jobs) == 2, what="both executors busy with A's jobs")
        quick = []  # (submitted, (tag, pid, started, ended))
        for i in range(20):
            submitted = time.monotonic()
            quick.append((submitted, b.submit(jobs.span, 0, ("b", i)).result(30)))
        assert sum(f.done() for f in long_jobs) < len(long_jobs) - 4  # A's jobs were queued all along
        for f in long_jobs:
            f.cancel()
        ran = [f.result(30) for f in long_jobs if not f.cancelled()]
    assert [done[0] for _, done in quick] == [("b", i) for i in range(20)]  # each once, in order
    assert len({tag for tag, *_ in ran}) == len(ran)  # A's too
    for submitted, (_, pid, started, _) in quick:
        ahead = [tag for tag, on, start, _ in ran if on == pid and submitted + SENT_BEFORE < start < started]
        assert not ahead, f"B's job waited behind A's {ahead}, sent ahead to its executor"
    counts = wait_for(lambda: (lambda c: c if c["done"] == len(ran) + 20 else None)(
        query_status("127.0.0.1", port)["counts"]), what="the master's count of jobs done")
    assert counts["lost"] == 0 and counts["duplicates"] == 0


def latencies(ex, n: int) -> list[float]:
    """Seconds each of ``n`` tiny jobs took from submit to result, one after another."""
    took = []
    for i in range(n):
        start = time.monotonic()
        assert ex.submit(pow, i, 2).result(30) == i * i
        took.append(time.monotonic() - start)
    return took


@pytest.mark.parametrize("lanes", ["1", "0"])
def test_quick_jobs_of_one_client_run_at_once_while_another_clients_long_jobs_hold_every_executor(
        cluster, monkeypatch, lanes):
    """Item 13: A's 0.4 s jobs keep both executors busy; B's tiny jobs run on
    the workers' express spares (its jobs are known to be quick, and it has
    none out), so B's median latency stays within a few ms of idle."""
    monkeypatch.setenv("CW_LANES", lanes)
    port = cluster(2)
    wait_for(lambda: len(query_status("127.0.0.1", port)["express"]) == 2, what="the workers' spares")
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as a, \
            ClusterExecutor("127.0.0.1", port, connect_timeout=10) as b:
        idle = statistics.median(latencies(b, 40))
        long_jobs = [a.submit(jobs.span, LONG, ("a", i)) for i in range(100)]
        wait_for(lambda: sum(f.running() for f in long_jobs) == 2, what="both executors busy with A's jobs")
        busy = statistics.median(latencies(b, 40))
        assert sum(f.done() for f in long_jobs) < len(long_jobs) - 4  # A's jobs were queued all along
        for f in long_jobs:
            f.cancel()
        ran = [f.result(30) for f in long_jobs if not f.cancelled()]
    print(f"B's median latency: {idle * 1e3:.2f} ms idle, {busy * 1e3:.2f} ms beside A's jobs")
    assert busy < idle + 0.005, (idle, busy)  # not LONG / 2, the wait for an A job to end
    assert len({tag for tag, *_ in ran}) == len(ran)
    status = query_status("127.0.0.1", port)
    assert sum(e["done"] for e in status["express"]) >= 20  # where B's jobs ran
    counts = wait_for(lambda: (lambda c: c if c["done"] == len(ran) + 80 else None)(
        query_status("127.0.0.1", port)["counts"]), what="the master's count of jobs done")
    assert counts["lost"] == 0 and counts["duplicates"] == 0
