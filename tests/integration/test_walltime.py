"""Walltime-aware placement (issue 27): a job said to take longer than a
worker has left before its time limit goes to a worker with the time."""
import jobs
import psutil
from conftest import wait_for, wait_workers

from cw.client import ClusterExecutor
from cw.launch import query_status


def test_a_job_expected_past_a_workers_time_limit_runs_on_one_with_time(procs):
    _, port = procs.master()
    short = procs.worker(port, "--time-left", "60")
    wait_workers(port, 1)
    snap = query_status("127.0.0.1", port)
    assert 50 <= snap["workers"][0]["left"] <= 60
    short_pids = {p.pid for p in psutil.Process(short.pid).children()}
    with ClusterExecutor("127.0.0.1", port, connect_timeout=20) as ex:
        long_job = ex.submit(jobs.sleep_pid, 0.2, "long", expected=120)
        quick = [ex.submit(jobs.sleep_pid, 0.01, i, expected=5) for i in range(5)]
        done = [f.result(30) for f in quick]
        assert [tag for tag, _ in done] == list(range(5))
        assert {pid for _, pid in done} <= short_pids  # jobs that fit ran on the short worker
        assert not long_job.done() and not long_job.running()  # waits: it could not finish there
        fresh = procs.worker(port)  # a worker with no time limit
        wait_workers(port, 2)
        tag, pid = long_job.result(30)
        assert tag == "long" and pid in {p.pid for p in psutil.Process(fresh.pid).children()}
    wait_for(lambda: query_status("127.0.0.1", port)["counts"]["done"] == 6, what="every job counted")
