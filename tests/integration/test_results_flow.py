"""Results leave their executor at once, whatever runs after them (real processes)."""
import gc
import os
import sys
import weakref
from concurrent.futures import FIRST_COMPLETED, wait

import cloudpickle
import jobs
import pytest
from conftest import wait_for

from cw.client import ClientThread, ClusterExecutor


def test_a_result_does_not_wait_behind_the_next_job(cluster, tmp_path):
    """After a burst of short jobs (their results travel in batches), a quick
    job's result arrives while the long job queued behind it on the one
    executor still runs: the long one cannot end until the test says so."""
    port = cluster(1)
    release = tmp_path / "release"
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert list(ex.map(jobs.square, range(300))) == [i * i for i in range(300)]
        quick = ex.submit(jobs.add, 6, 36)
        slow = ex.submit(jobs.wait_for_file, str(release), "slow", 60)
        done, _ = wait([quick, slow], timeout=30, return_when=FIRST_COMPLETED)
        assert done == {quick} and quick.result() == 42
        assert not slow.done() and not release.exists()
        release.touch()
        assert slow.result(60) == "slow"


def test_client_thread_callback_comes_while_the_next_job_runs(cluster, tmp_path):
    port = cluster(1)
    release = tmp_path / "release"
    got = {}
    with ClientThread(lambda jid, value: got.setdefault(jid, value), "127.0.0.1", port) as ct:
        for i in range(100):
            ct.submit(i, jobs.square, i)
        ct.submit("quick", jobs.add, 1, 1)
        ct.submit("slow", jobs.wait_for_file, str(release), "slow", 60)
        wait_for(lambda: "quick" in got, timeout=30, what="the quick job's callback")
        assert "slow" not in got and got["quick"] == 2 and len(got) == 101
        release.touch()
    assert got["slow"] == "slow" and os.path.exists(release)


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors cannot import tests/


class Dummy:
    """A result a weak reference can watch (ints and lists cannot have one)."""

    def __init__(self, i):
        self.i = i


def make_dummy(i):
    return Dummy(i)


@pytest.mark.parametrize("options", [{}, {"chunksize": 3}, {"progress": True}],
                         ids=["plain", "chunked", "progress"])
def test_map_keeps_no_reference_to_a_result_it_yielded(cluster, options):
    """CPython's test_free_reference (issue 14406), for each kind of map."""
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        seen = 0
        for obj in ex.map(make_dummy, range(10), **options):
            assert obj.i == seen
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None, f"the map still holds result {seen}"
            seen += 1
        assert seen == 10
