"""Issue 27 item 1 on the real 3-node SLURM bed: the master outlives its job.

A cluster started with a master time limit of 1 minute runs a sweep of 3
minutes: successor master jobs take over (cw.succession), clients
and workers follow them, and every result arrives exactly once.
"""
import collections
import os
import signal
import subprocess
import threading
import time

import jobs
import psutil
import pytest
from conftest import Collector, wait_for
from test_slurm import cw_processes, slurm_py, squeue_names

from cw.client import ClientThread

pytestmark = pytest.mark.slurm


class Sweep(Collector):
    """A ClientThread callback counting deliveries, and a watch on the
    cluster's master jobs: each id, with every state squeue showed it in."""

    def __init__(self):
        super().__init__()
        self.masters = collections.defaultdict(set)
        self.watching = threading.Event()
        self.watcher = threading.Thread(target=self.watch)

    def watch(self):
        while not self.watching.is_set():
            for name, _, _, jobid, state in squeue_names("%j|%N|%k|%i|%T"):
                if name == "cw-master-default":
                    self.masters[jobid].add(state)
            time.sleep(1)

    def __enter__(self):
        self.watcher.start()
        return self

    def __exit__(self, *exc):
        self.watching.set()
        self.watcher.join()

    def running(self):
        return sorted(job for job, states in self.masters.items() if "RUNNING" in states)


def stop_and_check(home):
    stop = slurm_py("stop")
    assert stop.returncode == 0, stop.stderr
    assert squeue_names() == []
    wait_for(lambda: cw_processes(home) == [], what="no cw process on any node")
    assert not (home / "default" / "master.json").exists()
    assert not (home / "default" / "succession.json").exists()


@pytest.mark.timeout(480)
def test_a_three_minute_sweep_outlives_a_master_time_limit_of_one_minute(slurm_home):
    done = slurm_py("-n", "2", "--master-time", "1", "--time", "10", "start")
    assert done.returncode == 0, done.stderr
    sweep = Sweep()
    submitted = 0
    with sweep, ClientThread(sweep, connect_timeout=30) as ct:  # it raises in wait() on any failure
        began = time.monotonic()
        while time.monotonic() - began < 180:  # jobs keep coming, through every handover
            for _ in range(4):
                ct.submit(submitted, jobs.sleep, 0.2, submitted)
                submitted += 1
            time.sleep(1)
    print(f"succession: {submitted} jobs, master jobs {dict(sweep.masters)}")
    assert {k: len(v) for k, v in sweep.results.items()} == {i: 1 for i in range(submitted)}
    assert all(v == [k] for k, v in sweep.results.items())
    assert len(sweep.running()) >= 3, "the master should have been replaced at least twice"
    assert any("PENDING" in states for states in sweep.masters.values()), "squeue shows the successor"
    stop_and_check(slurm_home)


def scontrol(*args):
    return subprocess.run(["scontrol", *args], capture_output=True, timeout=30).returncode


def master_process(home):
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CW_HOME") == str(home) and "cw.master" in proc.cmdline():
                return proc
        except psutil.Error:
            pass
    return None


@pytest.mark.timeout(240)
def test_a_master_killed_as_in_a_node_failure_is_replaced_by_its_successor(slurm_home, caplog):
    done = slurm_py("-n", "2", "--time", "10", "start")
    assert done.returncode == 0, done.stderr
    sweep = Sweep()
    with sweep, ClientThread(sweep, connect_timeout=5) as ct:
        for i in range(300):
            ct.submit(i, jobs.sleep, 0.1, i)
        wait_for(lambda: sweep.count() >= 20, timeout=60, what="some results")
        # The successor waits in the queue past the client's connect_timeout
        # (a begin time 10 min away, as a busy queue would keep it): the
        # client keeps its jobs because a master job is coming, not because
        # the switch was quick.
        successor = wait_for(lambda: [j for j, states in sweep.masters.items() if states == {"PENDING"}],
                             what="the successor in the queue")[0]
        assert scontrol("update", f"JobId={successor}", "StartTime=now+600") == 0
        os.kill(master_process(slurm_home).pid, signal.SIGKILL)
        wait_for(lambda: "keeping" in caplog.text, timeout=60, what="the client to wait for the successor")
        assert sweep.count() < 300
        assert scontrol("update", f"JobId={successor}", "StartTime=now") == 0
    assert {k: len(v) for k, v in sweep.results.items()} == {i: 1 for i in range(300)}
    assert all(v == [k] for k, v in sweep.results.items())
    assert "RUNNING" in sweep.masters[successor]
    stop_and_check(slurm_home)
