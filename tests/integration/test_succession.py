"""A master that moves: clients and workers follow the cluster's master.json.

A successor master job (cw.succession) starts on another node and
port; here a second master process on a new port stands for it. On SLURM
the same path is tested on the test bed (tests/slurm/test_long_runs.py).
"""
import jobs
import pytest
from conftest import Collector, wait_for, wait_workers
from test_faults import CLIENT_FAST, FAST, status

from cw import MasterUnavailableError
from cw.client import ClientThread, ClusterExecutor
from cw.cluster import master_address


@pytest.mark.timeout(120)
def test_clients_and_workers_follow_a_master_that_moved_to_another_port(procs):
    first, port = procs.master(*FAST)
    for _ in range(2):
        procs.worker(port, *FAST)
    wait_workers(port, 2)
    got = Collector()
    with ClientThread(got, **CLIENT_FAST) as ct:  # no port given: it follows master.json
        for i in range(60):
            ct.submit(i, jobs.sleep, 0.05, i)
        wait_for(lambda: got.count() >= 5, what="some results")
        first.kill()
        first.wait(10)
        before = got.count()
        assert before < 60
        _, moved = procs.master(*FAST)
        assert moved != port and master_address() == f"tcp://127.0.0.1:{moved}"
    assert got.exactly_once(range(60)) == {i: i for i in range(60)}
    snap = wait_workers(moved, 2)  # both workers, and their executors, found the new master
    assert snap["counts"]["submitted"] == 60 - before  # the client sent it exactly what was missing


@pytest.mark.timeout(60)
def test_a_client_given_a_port_stays_on_it(procs):
    first, port = procs.master(*FAST)
    ex = ClusterExecutor("127.0.0.1", port, heartbeat=0.2, liveness=5, connect_timeout=3)
    try:
        queued = ex.submit(jobs.square, 4)  # no worker: it stays queued
        wait_for(lambda: status(port)["queued"] == 1, what="the job queued")
        first.kill()
        first.wait(10)
        _, moved = procs.master(*FAST)
        with pytest.raises(MasterUnavailableError, match=f"127.0.0.1:{port}"):
            queued.result(30)  # pinned to the port it was given: it does not follow
        assert status(moved)["counts"]["submitted"] == 0
    finally:
        ex.shutdown(wait=False)
