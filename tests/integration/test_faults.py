"""Fault tolerance: every result arrives exactly once, whatever dies."""
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import CancelledError

import jobs
import psutil
import pytest
from conftest import ROOT, Collector, stop_gracefully, wait_for, wait_workers

from cw import MasterUnavailableError, WorkerLostError
from cw.client import ClientThread, ClusterExecutor
from cw.launch import query_status

FAST = ("--heartbeat", "0.2", "--liveness", "5")  # a peer is gone after 1 s of silence
CLIENT_FAST = {"heartbeat": 0.2, "liveness": 5, "connect_timeout": 20}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(port):
    return query_status("127.0.0.1", port)


def busy_worker(port, workers):
    """A worker process (Popen) whose executor runs a job right now."""
    snap = status(port)
    busy = {e["pid"] for e in snap["executors"] if e["running"]}
    for w in workers:
        if {c.pid for c in psutil.Process(w.pid).children()} & busy:
            return w
    return None


def fast_workers(cluster, procs, n=2):
    """A master and ``n`` workers on fast heartbeats; the port and the worker processes."""
    port = cluster(0, master_args=FAST)
    workers = [procs.worker(port, *FAST) for _ in range(n)]
    wait_workers(port, n)
    return port, workers


def test_sigkill_of_a_whole_worker_loses_no_job(cluster, procs):
    port, workers = fast_workers(cluster, procs)
    got = Collector()
    with ClientThread(got, "127.0.0.1", port, **CLIENT_FAST) as ct:
        for i in range(20):
            ct.submit(i, jobs.sleep, 0.2, i)
        victim = wait_for(lambda: busy_worker(port, workers), what="a busy worker")
        wait_for(lambda: status(port)["running"] == 2, what="both workers busy")
        procs.kill_tree(victim.pid)
    assert got.exactly_once(range(20)) == {i: i for i in range(20)}
    assert status(port)["counts"]["requeued"] >= 1


def test_job_that_sigkills_its_executor_fails_after_retries(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, retries=2, connect_timeout=10) as ex:
        with pytest.raises(WorkerLostError) as info:
            ex.submit(jobs.kill_self).result(60)
        message = str(info.value)
        assert "signal 9" in message and "3 times" in message and "pid" in message
        assert socket.gethostname() in message
        assert list(ex.map(jobs.square, range(10))) == [i * i for i in range(10)]


def test_a_crashing_job_among_short_ones_is_charged_and_no_other_is_lost(cluster):
    """Short jobs travel in batches and their results come back in batches, so
    the job an executor died in is rarely the first it held: the supervisor
    tells which one it was, and only that one counts the death."""
    port = cluster(2)
    got = Collector()
    with pytest.raises(WorkerLostError) as info:  # failures are not callbacks: wait() raises
        with ClientThread(got, "127.0.0.1", port, retries=1, **CLIENT_FAST) as ct:
            for i in range(600):
                if i == 300:
                    ct.submit("crash", jobs.kill_self)
                ct.submit(i, jobs.square, i)
            wait_for(lambda: got.count() == 600, timeout=60, what="the other results")
    assert "signal 9" in str(info.value) and "2 times" in str(info.value)
    assert got.exactly_once(range(600)) == {i: i * i for i in range(600)}
    assert status(port)["counts"]["lost"] == 1


def test_master_restart_loses_no_job_and_repeats_none(procs, cw_home):
    port = free_port()
    master = procs.spawn("-m", "cw.master", "--host", "127.0.0.1", "--port", str(port), *FAST)
    for _ in range(2):
        procs.worker(port, *FAST)
    wait_workers(port, 2)
    got = Collector()
    with ClientThread(got, "127.0.0.1", port, **CLIENT_FAST) as ct:
        for i in range(40):
            ct.submit(i, jobs.sleep, 0.05, i)
        wait_for(lambda: got.count() >= 5, what="some results")
        master.kill()
        master.wait(10)
        assert got.count() < 40
        procs.spawn("-m", "cw.master", "--host", "127.0.0.1", "--port", str(port), *FAST)
    assert got.exactly_once(range(40)) == {i: i for i in range(40)}


def test_no_master_coming_back_fails_pending_futures(procs):
    port = free_port()
    master = procs.spawn("-m", "cw.master", "--host", "127.0.0.1", "--port", str(port), *FAST)
    wait_for(lambda: _answers(port), what="the master")
    ex = ClusterExecutor("127.0.0.1", port, heartbeat=0.2, liveness=5, connect_timeout=2)
    try:
        fut = ex.submit(jobs.square, 2)  # no worker: it stays queued
        master.kill()
        master.wait(10)
        with pytest.raises(MasterUnavailableError, match=f"127.0.0.1:{port}"):
            fut.result(30)
    finally:
        ex.shutdown(wait=False)


def _answers(port):
    try:
        return status(port)
    except Exception:
        return None


def test_sigterm_drains_a_worker_mid_job(cluster, procs):
    port = cluster(0, master_args=FAST)
    worker = procs.worker(port, *FAST)
    wait_workers(port, 1)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        running = ex.submit(jobs.sleep, 1.0, "finished")
        queued = [ex.submit(jobs.square, i) for i in range(3)]
        wait_for(running.running, what="the job to start")
        assert stop_gracefully(worker) == 0
        assert running.result(30) == "finished"  # it finished within the grace
        procs.worker(port, *FAST)
        assert [f.result(30) for f in queued] == [0, 1, 4]


def test_drain_past_grace_hands_the_job_back_without_a_retry(cluster, procs):
    port = cluster(0, master_args=FAST)
    worker = procs.worker(port, "--grace", "0.5", *FAST)
    wait_workers(port, 1)
    with ClusterExecutor("127.0.0.1", port, retries=0, **CLIENT_FAST) as ex:
        slow = ex.submit(jobs.sleep, 3.0, "done elsewhere")
        wait_for(slow.running, what="the job to start")
        assert stop_gracefully(worker) == 0
        wait_for(lambda: status(port)["queued"] == 1, what="the job back in the queue")
        procs.worker(port, *FAST)
        assert slow.result(30) == "done elsewhere"  # retries=0: the hand-back cost none
    assert status(port)["counts"]["lost"] == 0


CLIENT_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
import jobs
from cw.client import ClusterExecutor
ex = ClusterExecutor("127.0.0.1", {port}, heartbeat=0.2, liveness=5)
futs = [ex.submit(jobs.sleep, 60) for _ in range(4)]
print("submitted", flush=True)
time.sleep(120)
"""


def test_killed_client_stops_occupying_workers(cluster, procs):
    port = cluster(2, master_args=FAST, worker_args=FAST)
    before = {e["pid"] for e in status(port)["executors"]}
    script = CLIENT_SCRIPT.format(tests=str(ROOT / "tests"), port=port)
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "submitted"
        wait_for(lambda: status(port)["running"] == 2, what="both workers busy")
        client.kill()
        client.wait(10)
        def replaced():  # the executors that ran its jobs were killed and replaced
            snap = status(port)
            pids = {e["pid"] for e in snap["executors"]}
            return len(pids) == 2 and not pids & before and snap["running"] == snap["queued"] == 0

        wait_for(replaced, timeout=15, what="workers freed")
    finally:
        client.kill()
        client.wait(10)
        client.stdout.close()
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert list(ex.map(jobs.square, range(4))) == [0, 1, 4, 9]


def test_job_past_its_timeout_raises_and_its_executor_is_replaced(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        first = ex.submit(jobs.pid).result(30)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="timeout of 0.5 s"):
            ex.submit(jobs.sleep, 30, timeout=0.5).result(30)
        assert time.monotonic() - start < 10
        assert ex.submit(jobs.pid).result(30) != first
    with ClusterExecutor("127.0.0.1", port, timeout=0.3, connect_timeout=10) as ex:
        with pytest.raises(TimeoutError):
            ex.submit(jobs.sleep, 30).result(30)
        assert ex.submit_call(jobs.add, (1,), {"b": 2}).result(30) == 3


def test_force_cancel_kills_a_running_job(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        first = ex.submit(jobs.pid).result(30)
        fut = ex.submit(jobs.sleep, 60)
        wait_for(fut.running, what="the job to start")
        assert fut.cancel() is False
        assert ex.cancel(fut, force=True) is True
        with pytest.raises(CancelledError):
            fut.result(5)
        assert ex.submit(jobs.pid).result(30) != first
        wait_for(lambda: status(port)["counts"]["killed"] == 1, what="the kill")


def test_network_cut_late_result_is_dropped(cluster, procs):
    port, workers = fast_workers(cluster, procs)
    got = Collector()
    with ClientThread(got, "127.0.0.1", port, **CLIENT_FAST) as ct:
        ct.submit("job", jobs.sleep_pid, 2.0, "job")
        victim = wait_for(lambda: busy_worker(port, workers), what="the job to start")
        stopped = procs.kill_tree(victim.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: status(port)["counts"]["requeued"] >= 1, what="the job requeued")
            wait_for(lambda: got.count() == 1, what="the result from the other worker")
        finally:
            for p in stopped:
                p.send_signal(signal.SIGCONT)
        wait_for(lambda: status(port)["counts"]["duplicates"] >= 1, what="the late result")
    results = got.exactly_once(["job"])
    assert results["job"][1] not in {p.pid for p in stopped}


def test_drain_longer_than_the_heartbeat_grace_is_no_death(cluster, procs, tmp_path):
    port = cluster(0, master_args=FAST)
    worker = procs.worker(port, "--grace", "10", *FAST)
    wait_workers(port, 1)
    began = tmp_path / "began"
    with ClusterExecutor("127.0.0.1", port, retries=0, **CLIENT_FAST) as ex:
        job = ex.submit(jobs.mark_and_sleep, str(began), 2.5, "finished")  # longer than the 1 s liveness
        # Begun in its executor, not only announced: a job still queued there
        # when the drain comes goes back to the master (no worker left here).
        wait_for(began.exists, what="the job to begin")
        assert stop_gracefully(worker) == 0
        assert job.result(30) == "finished"
    assert status(port)["counts"]["requeued"] == 0


def test_timeout_kills_the_processes_a_job_started(cluster, tmp_path):
    port = cluster(1)
    pidfile = tmp_path / "child.pid"
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        fut = ex.submit(jobs.spawn_and_sleep, str(pidfile), 300, timeout=1.5)
        with pytest.raises(TimeoutError):
            fut.result(30)
    child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="child pid"))
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie",
             what="the job's child to die")


def test_executor_killed_by_a_realtime_signal_is_reported(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, retries=0, connect_timeout=10) as ex:
        with pytest.raises(WorkerLostError, match=f"signal {signal.SIGRTMIN + 2}"):
            ex.submit(jobs.kill_self_realtime).result(30)
        assert ex.submit(jobs.square, 5).result(30) == 25


def test_result_over_the_size_limit_fails_its_job(procs):
    from cw import JobRejectedError

    _, port = procs.master("--max-message-size", "20000")
    procs.worker(port)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        with pytest.raises(JobRejectedError, match="--max-message-size 20000"):
            ex.submit(jobs.big_result, 50_000).result(30)
        assert len(ex.submit(jobs.big_result, 5_000).result(30)) == 5_000
        ex.shutdown()
        ex.shutdown()  # twice is fine
