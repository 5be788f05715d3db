"""Issue 28 item 1: per-job resources. A job that asks for GPUs, CPUs or
memory goes only where they are free, holds them while it runs, and sees
only its own GPUs (CUDA_VISIBLE_DEVICES). The GPU ids are made up: the
bookkeeping needs no GPU."""
import itertools
import os

import jobs
import pytest
from conftest import wait_for, wait_workers
from test_faults import status

from cw import JobRejectedError
from cw.client import ClientThread, ClusterExecutor
from cw.view import render


def overlapping(spans):
    """Pairs of (value, start, end) that ran at the same time."""
    return [(a, b) for a, b in itertools.combinations(spans, 2) if a[1] < b[2] and b[1] < a[2]]


@pytest.mark.timeout(120)
def test_gpu_jobs_each_see_one_distinct_device_and_never_share_one(procs):
    _, port = procs.master()
    procs.worker(port, "--procs", "4", "--gpus", "0,1,2,3")
    wait_workers(port, 1, executors=4)
    with ClusterExecutor(port=port) as ex:
        futs = [ex.submit(jobs.devices, 0.2, i, resources={"gpus": 1}) for i in range(20)]
        busy = wait_for(lambda: (lambda s: s if s["workers"][0]["resources"]["gpus_used"] == 4 else None)(
            status(port)), what="4 GPUs in use")
        assert "GPUs 4/4 in use (0,1,2,3)" in render(busy, "")  # as `cw status` shows it
        got = [f.result(60) for f in futs]
        got += list(ex.map(jobs.devices, [0.2] * 20, range(20, 40), resources={"gpus": 1}))
    assert sorted(tag for *_, tag in got) == list(range(40))
    assert {ids for ids, *_ in got} == {"0", "1", "2", "3"}  # one id each, all four used
    assert all(a[0] != b[0] for a, b in overlapping(got)), "two jobs ran on one GPU at once"
    assert max(sum(1 for g in got if g[1] <= t[1] < g[2]) for t in got) == 4  # 4 at a time
    snap = status(port)["workers"][0]["resources"]
    assert snap["gpus"] == "0,1,2,3" and snap["gpus_used"] == 0  # all given back


@pytest.mark.timeout(60)
def test_a_job_no_worker_could_ever_run_fails_at_once_naming_what_exists(procs):
    _, port = procs.master()
    procs.worker(port, "--procs", "2", "--gpus", "0,1,2,3", "--cpus", "8", "--mem", "16G")
    wait_workers(port, 1, executors=2)
    with ClusterExecutor(port=port) as ex:
        with pytest.raises(JobRejectedError, match=r"asks for 1 CPU, 8 GPUs.*has 8 CPUs, 4 GPUs, "
                                                   r"16.0 GiB of memory \(GPUs 0, 1, 2, 3\)"):
            ex.submit(jobs.square, 2, resources={"gpus": 8}).result(10)
        with pytest.raises(JobRejectedError, match="64.0 GiB of memory"):
            ex.submit(jobs.square, 2, resources={"mem": "64G"}).result(10)
        assert ex.submit(jobs.square, 3, resources={"gpus": 2, "mem": "1G"}).result(30) == 9
        with pytest.raises(ValueError, match="unknown resource"):
            ex.submit(jobs.square, 2, resources={"gpu": 1})
        with pytest.raises(ValueError, match="mem='lots'"):
            ex.submit(jobs.square, 2, resources={"mem": "lots"})


@pytest.mark.timeout(120)
def test_a_two_cpu_job_on_a_worker_of_two_cpus_runs_alone(procs):
    _, port = procs.master()
    procs.worker(port, "--procs", "2", "--cpus", "2", "--gpus", "none")
    wait_workers(port, 1, executors=2)
    results = {}
    with ClientThread(results.__setitem__, "127.0.0.1", port) as ct:
        for i in range(6):
            ct.submit(i, jobs.devices, 0.2, i)
        ct.submit("wide", jobs.devices, 1.0, "wide", resources={"cpus": 2})
        for i in range(6, 12):
            ct.submit(i, jobs.devices, 0.2, i)
    wide = results.pop("wide")
    assert len(results) == 12
    beside = [tag for tag, value in results.items() if overlapping([wide, value])]
    assert beside == [], f"plain jobs {beside} ran beside the job that holds both CPUs"
    assert any(value[1] > wide[2] for value in results.values())  # later ones did run after it


@pytest.mark.timeout(60)
def test_jobs_that_bind_run_on_cpus_of_their_own_and_the_next_job_gets_all_back(procs):
    _, port = procs.master()
    procs.worker(port, "--procs", "2", "--cpus", "2", "--gpus", "none")
    wait_workers(port, 1, executors=2)
    ids = [int(c) for c in status(port)["workers"][0]["resources"]["cpu_ids"].split(",")]
    assert len(ids) == 2  # this machine's first two CPUs: the worker's
    with ClusterExecutor(port=port) as ex:
        bound = [ex.submit(jobs.affinity, 0.5, i, resources={"cpus": 1, "bind": True}) for i in range(2)]
        got = [f.result(30) for f in bound]
        after = [ex.submit(jobs.affinity, 0, i).result(30) for i in range(4)]  # plain: as the worker has
    assert overlapping(got), "the two should have run at once"
    assert sorted(cpus for cpus, *_ in got) == [[ids[0]], [ids[1]]]  # one each, not the same
    assert all(cpus == sorted(os.sched_getaffinity(0)) for cpus, *_ in after)
