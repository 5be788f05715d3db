"""The original cluster-workers' public API, called the way its programs call
it: positional start/stop with master and workers, cw.mp and cw.slurm,
cw.PORT, cw.randid() and cw.is_slurm_available(). Local clusters."""
import subprocess
import sys
import textwrap
import threading

import jobs
import psutil
import pytest
from conftest import ROOT, cw_processes, wait_for

import cw
import cw.mp
import cw.slurm
from cw.client import BaseClientThread, Client, ClientThread, ClusterExecutor, RemoteException
from cw.errors import MasterUnavailableError
from cw.launch import query_status


def alive(pids):
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_constants_and_helpers_of_the_original():
    assert cw.PORT == 5494
    ids = {cw.randid() for _ in range(100)}
    assert len(ids) == 100 and all(isinstance(i, int) and 0 <= i < 2**128 for i in ids)
    assert max(ids).bit_length() > 100  # 128 random bits, not a short token
    assert isinstance(cw.is_slurm_available(), bool)


def test_start_positionally_then_stop_the_master_alone_then_the_rest(cw_home, monkeypatch):
    monkeypatch.setenv("CW_PORT", "0")
    info = cw.start(2, True, True)
    workers = info["worker_pids"]
    try:
        with ClusterExecutor(connect_timeout=10) as ex:
            assert ex.submit(jobs.square, 7).result(30) == 49
        assert cw.stop(True, False) == 1  # master=True, workers=False: the master goes
        assert not alive([info["master_pid"]]) and len(alive(workers)) == 2
        again = cw.start(0, True, False, port=info["port"])  # a new master where they look
        wait_for(lambda: len(query_status(again["host"], again["port"])["workers"]) == 2,
                 what="the kept workers to register with the new master")
    finally:
        cw.stop()
    assert alive(workers) == []


def test_mp_stop_of_the_workers_alone_keeps_the_master(cw_home, monkeypatch):
    monkeypatch.setenv("CW_PORT", "0")
    info = cw.mp.start(2, True, True)
    try:
        assert cw.mp.stop(False, True) == 2  # master=False: the workers go, the master stays
        assert alive(info["worker_pids"]) == []
        assert alive([info["master_pid"]]) == [info["master_pid"]]
        cw.mp.start(1, False, True)  # workers for the kept master
        with ClusterExecutor(connect_timeout=10) as ex:
            assert ex.submit(jobs.square, 5).result(30) == 25
    finally:
        assert cw.mp.stop() == 2
    with cw.allocate(1, True, True, launcher="local") as got:
        assert len(got["worker_pids"]) == 1
    assert alive(got["worker_pids"] + [got["master_pid"]]) == []


def test_the_original_options_are_refused_where_they_mean_nothing(cw_home):
    with pytest.raises(ValueError, match="sbatch options"):
        cw.start(1, True, True, ["--time=10"], launcher="local")
    with pytest.raises(ValueError, match="launcher='docker'"):
        cw.start(1, True, True, docker_image="cw", launcher="local")


ORIGINAL_STYLE_MP = textwrap.dedent("""\
    import argparse

    import cw.mp

    parser = argparse.ArgumentParser(description="a local cluster")
    parser.add_argument("-n", "--nworkers", type=int, default=2)
    parser.add_argument("-M", "--no-master", dest="master", action="store_false")
    parser.add_argument("-W", "--no-workers", dest="workers", action="store_false")
    parser.add_argument("command", choices=["start", "stop"])
    args = parser.parse_args()
    if args.command == "start":
        cw.mp.start(args.nworkers, args.master, args.workers)
    else:
        cw.mp.stop(args.master, args.workers)
    """)


def test_a_program_in_the_originals_style_drives_cw_mp(cw_home, tmp_path):
    script = tmp_path / "mp.py"
    script.write_text(ORIGINAL_STYLE_MP)

    def run(*args):
        done = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**__import__("os").environ, "CW_PORT": "0"})
        assert done.returncode == 0, done.stderr

    run("-n", "2", "start")
    master = cw_home / "default" / "master.json"
    assert master.exists()
    run("-M", "stop")  # the workers only
    assert master.exists()
    run("stop")
    assert not master.exists()


def test_a_failed_job_is_caught_as_remote_exception_and_as_its_own_type(cluster):
    """The original raised RemoteException; cw raised the job's own type:
    a program written for either catches it."""
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        for catcher in (RemoteException, ValueError):
            with pytest.raises(catcher) as info:
                ex.submit(int, "not a number").result(30)
            assert isinstance(info.value, ValueError) and isinstance(info.value, RemoteException)
            assert "invalid literal" in str(info.value)
            assert "Traceback" in info.value.error and "invalid literal" in info.value.error
    for catcher in (RemoteException, ValueError):
        with ClientThread(lambda jobid, result: None, "127.0.0.1", port, connect_timeout=10) as ct:
            ct.submit("bad", int, "x")
            with pytest.raises(catcher) as info:
                ct.wait()
            ct.wait()  # said once, as the original's wait did: nothing more to raise
        assert "invalid literal" in info.value.error and info.value.jobid == "bad"


def test_client_thread_is_a_thread_with_start_job_stop_and_join(cluster):
    port = cluster(1)
    results = {}
    ct = ClientThread(lambda jobid, result: results.__setitem__(jobid, result), "127.0.0.1", port,
                      connect_timeout=10)
    assert isinstance(ct, threading.Thread) and ct.daemon and not ct.is_alive()
    ct.start()
    assert ct.is_alive()
    for i in range(5):
        ct.start_job(i, jobs.square, i)
    ct.wait()
    assert results == {i: i * i for i in range(5)}
    ct.stop()
    ct.join(10)
    assert not ct.is_alive()


def test_base_client_thread_hears_successes_and_failures(cluster):
    port = cluster(1)
    seen = {}
    both = threading.Event()

    def callback(jobid, success, result):
        seen[jobid] = (success, result)
        if len(seen) == 2:
            both.set()

    thread = BaseClientThread(callback, "127.0.0.1", port, connect_timeout=10)
    thread.start()
    try:
        thread.start_job("square", jobs.square, 3)
        thread.start_job("broken", int, "x")
        assert both.wait(30)
    finally:
        thread.stop()
        thread.join(10)
    assert seen["square"] == (True, 9)
    ok, error = seen["broken"]
    assert not ok and isinstance(error, RemoteException) and isinstance(error, ValueError)
    assert "invalid literal" in error.error
    assert issubclass(BaseClientThread, Client) and not thread.is_alive()


def test_a_client_thread_with_no_master_says_so_at_start(cw_home):
    ct = ClientThread(lambda jobid, result: None, "127.0.0.1", 1, connect_timeout=1)
    with pytest.raises(MasterUnavailableError):
        ct.start()
    ct.join(10)
    assert not ct.is_alive()


def roles(home):
    """The live cw processes of this test's cluster, by role."""
    found = {"master": [], "worker": []}
    for p in cw_processes(home):
        line = " ".join(p.cmdline())
        for role in found:
            if f"cw.{role}" in line or f"cw {role}" in line:
                found[role].append(p.pid)
    return found


def test_mp_py_stop_keeps_the_master_with_M_and_the_workers_with_W(cw_home):
    def mp(*args):
        done = subprocess.run([sys.executable, "mp.py", "--port", "0", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    mp("-n", "2", "start")
    before = wait_for(lambda: (lambda r: r if len(r["worker"]) == 2 and r["master"] else None)(
        roles(cw_home)), what="a master and 2 workers")
    mp("-M", "stop")  # -M: leave the master running
    assert roles(cw_home) == {"master": before["master"], "worker": []}
    mp("-M", "-n", "1", "start")
    assert wait_for(lambda: len(roles(cw_home)["worker"]) == 1, what="a worker for the kept master")
    mp("-W", "stop")  # -W: leave the workers running
    after = roles(cw_home)
    assert after["master"] == [] and len(after["worker"]) == 1
    mp("stop")
    assert wait_for(lambda: roles(cw_home) == {"master": [], "worker": []}, what="nothing left")


def test_the_scripts_start_the_originals_number_of_workers_by_default():
    for script, default in (("mp.py", 8), ("slurm.py", 32)):
        done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and f"[default: {default};" in done.stdout, done.stdout
    from cw.cli_launch import mp_command, slurm_command

    for command, default in ((mp_command, 8), (slurm_command, 32)):
        assert next(p.default for p in command.params if p.name == "nworkers") == default


def test_stop_and_status_list_only_the_options_they_use():
    done = subprocess.run([sys.executable, "-m", "cw.cli", "local", "stop", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--no-master" in done.stdout and "--cluster" in done.stdout
    for start_only in ("--nworkers", "--procs-per-worker", "--port", "--timeout"):
        assert start_only not in done.stdout


def test_cw_start_says_where_it_runs_and_a_second_start_is_refused_in_python_terms(cw_home, capfd,
                                                                                   monkeypatch):
    monkeypatch.delenv("CW_PORT", raising=False)
    info = cw.start(1, launcher="local")
    try:
        err = capfd.readouterr().err
        assert (f"cw: started a local cluster 'default': master at {info['host']}:{info['port']}, "
                "1 worker(s)") in err
        assert info["port"] != cw.PORT  # a free port: the fixed one may be another user's here
        with pytest.raises(cw.ClusterError, match=r"already running .*cw\.stop\(\)") as refused:
            cw.start(1, launcher="local")
        assert "-M" not in str(refused.value) and "master=False" in str(refused.value)
    finally:
        cw.stop(launcher="local")


def test_a_taken_port_is_named_as_the_reason_the_master_did_not_start(cw_home):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "mp.py", "-n", "1", "--port", str(port), "start"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Address already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
