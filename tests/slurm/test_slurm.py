"""./slurm.py against a real 3-node SLURM cluster (tests/slurm/slurmbox.sh)."""
import collections
import getpass
import itertools
import os
import subprocess
import sys
import threading
import time

import jobs
import psutil
import pytest
from conftest import ROOT, wait_for
from docblocks import Session, run_bed_blocks

from cw import slurm as cw_slurm
from cw.client import ClientThread, SlurmExecutor
from cw.cluster import read_json
from cw.errors import ClusterError, JobRejectedError

pytestmark = pytest.mark.slurm


def slurm_py(*args, timeout=180):
    return subprocess.run([sys.executable, "slurm.py", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def squeue_names(fields="%j|%N|%k"):
    out = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", fields],
                         capture_output=True, text=True, timeout=30).stdout
    return [line.split("|") for line in out.splitlines()]


def cw_processes(home):
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CW_HOME") == str(home) and "cw." in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


def node_of_job():
    return os.environ.get("SLURMD_NODENAME")


def test_the_slurm_guide_runs(slurm_home, tmp_path):
    """docs/slurm.md's run=slurm blocks, as a reader types them, in a session
    of their own (its own CW_HOME, cluster ``docs``, SLURM picked as on a site)."""
    session = Session(tmp_path, launcher=None)
    try:
        run_bed_blocks(ROOT / "docs" / "slurm.md", "slurm", session)
    finally:
        leaked = session.close()
    assert not leaked, "the guide's blocks left processes behind:\n" + "\n".join(leaked)
    assert squeue_names() == []


def test_start_run_status_stop_on_three_nodes(slurm_home):
    done = slurm_py("-n", "4", "start")
    assert done.returncode == 0, done.stderr
    assert "4 worker(s) registered" in done.stdout
    assert cw_slurm.master_host() in {"node1", "node2", "node3"}
    with SlurmExecutor(connect_timeout=30) as ex:
        nodes = list(ex.map(jobs.node, range(1000)))
    assert len(nodes) == 1000 and set(nodes) <= {"node1", "node2", "node3"}
    assert len(set(nodes)) > 1  # the work really spread over hosts
    status = slurm_py("status")
    assert status.returncode == 0
    assert status.stdout.count("    worker node") == 4 and "workers registered: 4" in status.stdout
    stop = slurm_py("stop")
    assert stop.returncode == 0, stop.stderr
    assert squeue_names() == []
    wait_for(lambda: cw_processes(slurm_home) == [], what="no cw process on any node")
    assert not (slurm_home / "default" / "master.json").exists()


def test_two_clusters_side_by_side(slurm_home):
    for name in ("alpha", "beta"):
        done = slurm_py("--cluster", name, "-n", "1", "start")
        assert done.returncode == 0, done.stderr
    for name in ("alpha", "beta"):
        with SlurmExecutor(cluster=name, connect_timeout=30) as ex:
            assert ex.submit(jobs.square, 7).result(60) == 49
    assert "cw-worker-alpha" not in slurm_py("--cluster", "beta", "status").stdout
    assert slurm_py("--cluster", "alpha", "stop").returncode == 0
    assert {n[0] for n in squeue_names()} == {"cw-master-beta", "cw-worker-beta"}
    with SlurmExecutor(cluster="beta", connect_timeout=30) as ex:
        assert ex.submit(jobs.square, 8).result(60) == 64
    assert slurm_py("--cluster", "beta", "stop").returncode == 0
    assert squeue_names() == []


@pytest.mark.timeout(400)
def test_worker_time_limit_loses_no_client_job(slurm_home):
    assert slurm_py("-n", "1", "start").returncode == 0
    limited = slurm_py("-M", "-n", "1", "--time", "1", "--grace", "5", "start")
    assert limited.returncode == 0, limited.stderr
    got = collections.defaultdict(list)
    lock = threading.Lock()

    def collect(jobid, result):
        with lock:
            got[jobid].append(result)

    submitted = 0
    with ClientThread(collect, cw_slurm.master_host(), connect_timeout=30) as ct:
        deadline = time.monotonic() + 240
        # Keep both workers busy until SLURM has ended the time-limited one.
        while len(worker_jobs()) > 1 and time.monotonic() < deadline:
            for _ in range(4):
                ct.submit(submitted, jobs.sleep, 0.5, submitted)
                submitted += 1
            time.sleep(1)
        for _ in range(8):
            ct.submit(submitted, jobs.sleep, 0.2, submitted)
            submitted += 1
    assert len(worker_jobs()) == 1, "the time-limited worker should have ended"
    assert {k: len(v) for k, v in got.items()} == {i: 1 for i in range(submitted)}
    assert all(v == [k] for k, v in got.items())
    assert slurm_py("stop").returncode == 0


def test_isolated_puts_one_worker_on_each_node(slurm_home):
    done = slurm_py("-i", "-n", "3", "start")
    assert done.returncode == 0, done.stderr
    with SlurmExecutor(connect_timeout=30) as ex:
        nodes = set(ex.map(jobs.node, range(300)))
    status = slurm_py("status").stdout
    workers = [line.split()[1] for line in status.splitlines() if line.startswith("    worker ")]
    assert sorted(workers) == ["node1", "node2", "node3"]
    assert nodes == {"node1", "node2", "node3"}
    assert slurm_py("stop").returncode == 0
    wait_for(lambda: cw_processes(slurm_home) == [], what="no cw process on any node")


def test_extra_sbatch_arguments_reach_sbatch(slurm_home):
    done = slurm_py("-n", "1", "--Xmaster=--comment=from-xmaster",
                    "--Xworkers=--comment=from-xworkers", "start")
    assert done.returncode == 0, done.stderr
    comments = {name: comment for name, _, comment in squeue_names()}
    assert comments == {"cw-master-default": "from-xmaster", "cw-worker-default": "from-xworkers"}
    assert slurm_py("stop").returncode == 0


def test_worker_finds_its_master_through_slurm(slurm_home):
    with pytest.raises(ClusterError, match="no SLURM job 'cw-master-default'"):
        cw_slurm.master_host()
    assert slurm_py("-n", "0", "start").returncode == 0
    worker = subprocess.Popen([sys.executable, "-m", "cw.worker", "--slurm"], cwd=ROOT)
    try:
        with SlurmExecutor(connect_timeout=30) as ex:
            assert ex.submit(jobs.square, 9).result(60) == 81
    finally:
        worker.terminate()
        assert worker.wait(60) == 0
    assert slurm_py("stop").returncode == 0


def test_bad_values_are_one_line_errors(slurm_home):
    for args, message in ((("--time", "soon", "start"), "--time"),
                          (("-n", "many", "start"), "many"),
                          (("--cluster", "a/b", "start"), "invalid cluster name")):
        done = slurm_py(*args)
        assert done.returncode in (1, 2) and message in done.stderr
        assert "Traceback" not in done.stderr


def test_cw_start_and_stop_pick_slurm_when_it_is_there(slurm_home):
    import cw

    info = cw.start(2)
    try:
        assert len(info["jobs"]) == 2 and info["registered"] == 2
        with SlurmExecutor(connect_timeout=30) as ex:
            assert ex.submit(jobs.square, 6).result(60) == 36
    finally:
        cw.stop()
    assert squeue_names() == []


def slurm_job():
    return os.environ.get("SLURM_JOB_ID")


def test_a_job_expected_past_a_workers_time_limit_runs_on_a_fresh_worker(slurm_home):
    """Issue 27: a worker 1 minute from its time limit (less slurm.py's 15 s
    margin) runs short jobs, not one expected to take 120 s; that one waits
    for a worker with the time, and `./slurm.py status` says what each has left."""
    assert slurm_py("-W", "start").returncode == 0
    assert slurm_py("-M", "-n", "1", "--time", "1", "--grace", "5", "start").returncode == 0
    status = slurm_py("status")
    assert status.returncode == 0 and "left before its time limit" in status.stdout, status.stdout
    with SlurmExecutor(connect_timeout=30) as ex:
        limited = ex.submit(slurm_job, expected=5).result(60)
        long_job = ex.submit(slurm_job, expected=120)
        assert ex.submit(slurm_job, expected=5).result(60) == limited  # short ones still run there
        assert not long_job.done() and not long_job.running()
        assert slurm_py("-M", "-n", "1", "start").returncode == 0  # no time limit of its own
        fresh = long_job.result(60)
    assert fresh not in (None, limited)
    assert slurm_py("stop").returncode == 0
    assert squeue_names() == []


def worker_jobs(cluster="default"):
    return [j for j in squeue_names() if j[0] == f"cw-worker-{cluster}"]


def test_adapt_brings_workers_for_queued_jobs_and_lets_idle_ones_go(slurm_home):
    """Issue 27 item 2, --adapt 0:3: no work, no worker job; 200 jobs bring at
    most 3; idle for the timeout, they go; the controller calls are counted."""
    began = time.monotonic()
    done = slurm_py("--adapt", "0:3", "--idle-timeout", "4", "--adapt-interval", "2", "start")
    assert done.returncode == 0, done.stderr
    state = slurm_home / "default" / "adapt-state.json"
    wait_for(lambda: (read_json(state) or {}).get("squeue_calls", 0) >= 2, what="the scaler's looks")
    assert worker_jobs() == []  # nothing queued: nothing submitted
    seen, watching = [], threading.Event()

    def watch():
        while not watching.is_set():
            seen.append(len(worker_jobs()))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with SlurmExecutor(connect_timeout=30) as ex:
            assert list(ex.map(jobs.sleep, [0.05] * 200, range(200), timeout=180)) == list(range(200))
    finally:
        watching.set()
        watcher.join()
    assert 1 <= max(seen) <= 3
    wait_for(lambda: worker_jobs() == [], timeout=90, what="idle workers to leave")
    said = read_json(state)
    print(f"adapt: most worker jobs at once {max(seen)}, state {said}, {time.monotonic() - began:.0f} s")
    assert said["sbatch_calls"] >= 1 and said["submitted"] <= 3 + said["sbatch_calls"] and not said["stopped"]
    assert said["squeue_calls"] <= (time.monotonic() - began) / 2 + 3  # one a look, never one a job
    assert "adapt 0:3" in slurm_py("status").stdout
    assert slurm_py("stop").returncode == 0
    assert squeue_names() == []


def test_adapt_stops_after_failed_submissions_and_says_why(slurm_home, caplog):
    done = slurm_py("--cluster", "broken", "--adapt", "0:2", "--adapt-interval", "1", "--adapt-failures", "2",
                    "--Xworkers=--no-such-option", "start")
    assert done.returncode == 0, done.stderr
    state = slurm_home / "broken" / "adapt-state.json"
    with SlurmExecutor(cluster="broken", connect_timeout=30) as ex:
        waiting = ex.submit(jobs.sleep, 0.01)
        wait_for(lambda: (read_json(state) or {}).get("stopped"), timeout=60, what="scaling to stop")
        status = subprocess.run([sys.executable, "-m", "cw.cli", "status", "--cluster", "broken"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert "STOPPED after 2 failed submissions" in status.stdout and "no-such-option" in status.stdout
        assert read_json(state)["sbatch_calls"] == 2 and worker_jobs("broken") == []
        wait_for(lambda: "the master says: adaptive scaling (--adapt) stopped after 2" in caplog.text,
                 timeout=30, what="the client's log to say so")  # the master looks every 10 s
        waiting.cancel()
    assert slurm_py("--cluster", "broken", "stop").returncode == 0


def test_a_worker_job_given_a_gpu_count_through_xworkers_is_accounted_for(slurm_home):
    """Issue 28 item 1 on the bed, which has no GRES: the count comes in the
    job's environment (CW_GPUS, read by `cw worker --gpus`)."""
    done = slurm_py("-n", "1", "--procs-per-worker", "2", "--Xworkers=--export=ALL,CW_GPUS=2", "start")
    assert done.returncode == 0, done.stderr
    with SlurmExecutor(connect_timeout=30) as ex:
        got = list(ex.map(jobs.devices, [0.3] * 8, range(8), resources={"gpus": 1}))
        with pytest.raises(JobRejectedError, match="asks for 1 CPU, 3 GPUs"):
            ex.submit(jobs.square, 2, resources={"gpus": 3}).result(30)
    assert {ids for ids, *_ in got} == {"0", "1"}
    assert not [(a, b) for a, b in itertools.combinations(got, 2)
                if a[0] == b[0] and a[1] < b[2] and b[1] < a[2]], "two jobs ran on one GPU at once"
    assert "GPUs 0/2 in use (0,1)" in slurm_py("status").stdout
    assert slurm_py("stop").returncode == 0
    assert squeue_names() == []
