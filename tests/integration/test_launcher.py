"""The local launcher: ./mp.py, `cw local`, cw.start/stop/allocate, cw.mp."""
import json
import os
import subprocess
import sys

import jobs
import psutil
import pytest
from conftest import ROOT, wait_for

import cw
import cw.mp
from cw.client import ClusterExecutor
from cw.errors import ClusterError


def run(*args, timeout=120, **env):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=timeout)


def cluster_processes(home):
    """Every live process recorded in the pid files, with all its descendants."""
    found = []
    for path in (home / "default" / "pids").glob("*.json"):
        rec = json.loads(path.read_text())
        proc = psutil.Process(rec["pid"])
        found += [proc, *proc.children(recursive=True)]
    return found


@pytest.fixture
def foreign():
    """A process whose command line looks exactly like a cw worker's."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "-m", "cw.worker", "127.0.0.1", "--port", "5494"])
    yield proc
    proc.kill()
    proc.wait(10)


@pytest.fixture
def stopped(cw_home):
    """Whatever a test started through the launcher is stopped at the end."""
    yield
    from cw.launch import local

    local.stop()


def test_mp_py_start_stop_leaves_no_process_and_spares_a_look_alike(cw_home, foreign, stopped):
    done = run("mp.py", "-n", "2", "--procs-per-worker", "2", "--port", "0", "start")
    assert done.returncode == 0, done.stderr
    assert "2 worker(s) started" in done.stdout
    # Master, two supervisors, four executors and each worker's express spare.
    started = wait_for(lambda: (lambda found: found if len(found) == 1 + 2 + 4 + 2 else None)(
        cluster_processes(cw_home)), what="every process of the cluster")
    # A stale pid file naming the look-alike (another create time) must not count.
    stale = {"pid": foreign.pid, "create_time": 1.0, "role": "worker", "log": ""}
    (cw_home / "default" / "pids" / "worker-stale.json").write_text(json.dumps(stale))
    with ClusterExecutor(connect_timeout=10) as ex:
        assert list(ex.map(jobs.square, range(20))) == [i * i for i in range(20)]
    done = run("mp.py", "stop")
    assert done.returncode == 0, done.stderr
    assert "stopped 3 process(es)" in done.stdout
    _, alive = psutil.wait_procs(started, timeout=10)
    assert alive == []
    assert foreign.poll() is None  # the look-alike lives on
    assert not (cw_home / "default" / "master.json").exists()
    assert list((cw_home / "default" / "pids").glob("*.json")) == []


def test_cw_local_start_stop_and_no_master_option(cw_home, stopped):
    done = run("-m", "cw.cli", "local", "start", "-n", "0", "--port", "0")
    assert done.returncode == 0, done.stderr
    done = run("mp.py", "-M", "-n", "1", "start")  # workers for the running master
    assert done.returncode == 0, done.stderr
    status = json.loads(run("mp.py", "status").stdout)
    assert len(status["workers"]) == 1
    assert "stopped 2 process(es)" in run("-m", "cw.cli", "local", "stop").stdout


def test_no_master_without_a_master_is_a_clear_error(cw_home):
    done = run("mp.py", "-M", "start")
    assert done.returncode == 1
    assert "no master running for cluster 'default'" in done.stderr and "Traceback" not in done.stderr


def test_second_master_for_one_cluster_is_refused(cw_home, stopped):
    assert run("mp.py", "-n", "0", "--port", "0", "start").returncode == 0
    done = run("mp.py", "-n", "0", "--port", "0", "start")
    assert done.returncode == 1 and "already has a master" in done.stderr


def test_cw_start_stop_and_allocate_pick_the_local_launcher(cw_home, monkeypatch):
    monkeypatch.setenv("CW_PORT", "0")
    info = cw.start(2)
    try:
        assert len(info["worker_pids"]) == 2
        with ClusterExecutor(connect_timeout=10) as ex:
            assert ex.submit(jobs.square, 3).result(30) == 9
    finally:
        assert cw.stop() == 3
    with cw.mp.allocate(1, cluster="other") as info:
        assert info["cluster"] == "other"
        with ClusterExecutor(cluster="other", connect_timeout=10) as ex:
            assert ex.submit(jobs.square, 4).result(30) == 16
    assert not (cw_home / "other" / "master.json").exists()
    with pytest.raises(ValueError, match="choose from: local, slurm"):
        cw.start(1, launcher="pbs")


def test_randid_is_random():
    assert len({cw.randid() for _ in range(100)}) == 100


@pytest.mark.parametrize("example, expect", [
    ("square.py", [f"the square for job {i} is {i * i}" for i in range(10)]),
    ("with.py", [f"the square for job {i} is {i * i}" for i in range(10)]),
    ("executor.py", ["the square for job 9 is 81", "2**4 = 16",
                     "sum of squares below 100000: 333328333350000"]),
])
def test_examples_print_what_the_originals_print(cw_home, example, expect):
    done = run(f"examples/{example}", CW_PORT="0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(line in lines for line in expect)
    assert not (cw_home / "default" / "master.json").exists()


def test_failed_start_leaves_nothing_running(cw_home):
    from cw.launch import local

    with pytest.raises(ClusterError):
        local.start(2, port=0, timeout=0.001)
    assert list((cw_home / "default" / "pids").glob("*.json")) == []
    assert local.read_master() is None

    def ours(proc):
        try:
            return proc.environ().get("CW_HOME") == str(cw_home)
        except psutil.Error:
            return False

    assert [p.pid for p in psutil.process_iter() if ours(p)] == []
