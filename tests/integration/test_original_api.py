"""The original cluster-workers' public API, called the way its programs call
it: positional start/stop with master and workers, cw.mp and cw.slurm,
cw.PORT, cw.randid() and cw.is_slurm_available(). Local clusters."""
import subprocess
import sys
import textwrap

import jobs
import psutil
import pytest
from conftest import ROOT, wait_for

import cw
import cw.mp
import cw.slurm
from cw.client import ClusterExecutor
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
