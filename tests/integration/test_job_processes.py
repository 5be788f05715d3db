"""The processes a job starts end with it (cw.worker.reaper): when it
returns, when its worker drains, when its executor dies; unless the job
starts them in a session of their own."""
import os
import signal

import jobs
import psutil
import pytest
from conftest import wait_for, wait_workers

from cw.client import ClusterExecutor
from cw.errors import WorkerLostError
from cw.launch import query_status

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")

FAST = ("--heartbeat", "0.2", "--liveness", "5")
CLIENT_FAST = {"heartbeat": 0.2, "liveness": 5, "connect_timeout": 20}


def gone(pid):
    """Ended and reaped: not even a zombie is left."""
    return not psutil.pid_exists(pid)


def kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("job", [jobs.start_child, jobs.start_orphan, jobs.start_child_in_thread],
                         ids=["child", "daemon-like grandchild", "child of a thread left running"])
def test_a_jobs_processes_end_when_it_returns(cluster, job):
    port = cluster(1, worker_args=FAST, master_args=FAST)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        executor = ex.submit(jobs.pid).result(30)
        child = ex.submit(job).result(30)
        try:
            assert child != executor
            wait_for(lambda: gone(child), timeout=5, what=f"the job's process {child} to end")
            assert ex.submit(jobs.pid).result(30) == executor  # the executor itself lives on
        finally:
            kill(child)


def test_a_process_in_a_session_of_its_own_outlives_its_job(cluster):
    port = cluster(1, worker_args=FAST, master_args=FAST)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        kept = ex.submit(jobs.start_child, new_session=True).result(30)
        try:
            ended = ex.submit(jobs.start_child).result(30)  # the next job's child, not this one
            wait_for(lambda: gone(ended), timeout=5, what="the second job's child to end")
            assert psutil.Process(kept).status() != psutil.STATUS_ZOMBIE
        finally:
            kill(kept)
        # once it ended, its executor (its parent) reaps it after a job: no zombie stays
        wait_for(lambda: ex.submit(jobs.square, 3).result(30) == 9 and gone(kept), timeout=5,
                 what="the kept process to be reaped")


def test_a_jobs_processes_end_when_its_worker_drains_mid_job(cluster, procs, tmp_path):
    port = cluster(0, master_args=FAST)
    worker = procs.worker(port, *FAST)
    wait_workers(port, 1)
    pidfile, release = tmp_path / "child", tmp_path / "release"
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        fut = ex.submit(jobs.start_child_and_wait, str(pidfile), str(release))
        child = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="the job's child"))
        try:
            worker.send_signal(signal.SIGTERM)  # it drains: the job finishes, within --grace
            wait_for(lambda: all(e["draining"] for e in query_status("127.0.0.1", port)["executors"]),
                     what="the drain to begin")
            release.touch()
            assert fut.result(30) == child
            assert worker.wait(20) == 0
            wait_for(lambda: gone(child), timeout=5, what="the job's child to end with the drain")
        finally:
            kill(child)


def test_a_jobs_processes_end_when_its_executor_dies_under_it(cluster, tmp_path):
    port = cluster(1, worker_args=FAST, master_args=FAST)
    pidfile = tmp_path / "child"
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        with pytest.raises(WorkerLostError):
            ex.submit(jobs.start_child_and_die, str(pidfile), retries=0).result(30)
        child = int(pidfile.read_text())
        try:
            wait_for(lambda: gone(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
                     timeout=5, what="the dead executor's child to be killed")
        finally:
            kill(child)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_what_multiprocessing_manages_is_left_to_it(cluster, method):
    """A pool kept between jobs keeps its workers and serves the next job; a
    pool made in each job (the forkserver and the resource tracker outlive
    the job) works again and again. (Not "fork": an executor runs threads,
    and a fork of a threaded process may deadlock whatever cw does; see
    docs/guarantees.md.)"""
    port = cluster(1, worker_args=FAST, master_args=FAST)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        workers, answer = ex.submit(jobs.pool_square, 3, method).result(60)
        assert answer == 9
        assert ex.submit(jobs.pool_square, 4, method).result(60) == (workers, 16)  # the same workers
        assert [ex.submit(jobs.pool_in_job, i, method).result(60) for i in range(3)] == [0, 1, 4]
