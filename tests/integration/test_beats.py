"""Sparse beats on real processes (cw.protocol.beats_apart): executors that
their supervisor vouches for beat, and are beaten, a few heartbeats apart,
and stay registered, idle, through many times the silence either side
tolerates; one that truly goes silent is still found."""
import signal
import time

import psutil
import pytest
from conftest import wait_for, wait_workers

from cw.client import ClusterExecutor
from cw.launch import query_status

# A silence of 2.25 s on either side; WELCOME then spaces beats 3 heartbeats (0.75 s).
BEATS = ("--heartbeat", "0.25", "--liveness", "9")
SILENCE = 0.25 * 9


def executors(port: int) -> dict:
    """pid -> jobs done, of the registered (non-spare) executors."""
    return {e["pid"]: e["done"] for e in query_status("127.0.0.1", port)["executors"]}


@pytest.mark.timeout(120)
def test_idle_vouched_executors_stay_registered_and_a_frozen_worker_is_still_found(cluster, procs):
    port = cluster(2, worker_args=BEATS, master_args=BEATS)
    with ClusterExecutor("127.0.0.1", port, heartbeat=0.25, liveness=9, connect_timeout=10) as ex:
        assert list(ex.map(abs, range(-40, 0))) == list(range(40, 0, -1))
        before = wait_for(lambda: (lambda d: d if sum(d.values()) == 40 else None)(executors(port)),
                          what="every job counted")
        time.sleep(3 * SILENCE)  # three times the silence after which either side gives the other up
        assert executors(port) == before  # none dropped, none registered anew (its count would restart)
        assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))
    # A worker frozen whole, supervisor and executors (a node that hangs):
    # found by its supervisor's silence, as before, though its executors beat sparsely.
    victim = psutil.Process(query_status("127.0.0.1", port)["workers"][0]["pid"])
    tree = [victim, *victim.children(recursive=True)]
    for proc in tree:
        proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: (lambda s: len(s["workers"]) == 1 and len(s["executors"]) == 1)(
            query_status("127.0.0.1", port)), timeout=30, what="the frozen worker and its executor dropped")
    finally:
        for proc in tree:
            proc.send_signal(signal.SIGCONT)
    wait_workers(port, 2)  # thawed, it registers again
