"""`cw doctor` and `cw status --why` (issue 27, item 5) against real processes
and a setup broken on purpose."""
import subprocess
import sys

import jobs
from conftest import ROOT, wait_for, wait_workers

from cw.client import ClusterExecutor
from cw.launch import query_status


def cw(*args):
    return subprocess.run([sys.executable, "-m", "cw.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def problems(done):
    return [line for line in done.stdout.splitlines() if line.startswith("PROBLEM")]


def test_doctor_names_each_fault_of_a_broken_setup(procs, cw_home, tmp_path, monkeypatch):
    master, port = procs.master()
    procs.worker(port)
    wait_workers(port, 1)
    healthy = cw("doctor")
    assert healthy.returncode == 0 and problems(healthy) == [], healthy.stdout
    assert "answers" in healthy.stdout and "as this client" in healthy.stdout
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "sitecustomize.py").write_text("import cloudpickle\ncloudpickle.__version__ = '2.0.0'\n")
    monkeypatch.setenv("PYTHONPATH", str(odd))  # a worker installed with another cloudpickle
    procs.worker(port)
    monkeypatch.delenv("PYTHONPATH")
    wait_workers(port, 2)
    secret = cw_home / "default" / "keys" / "worker" / "worker.key_secret"
    secret.chmod(0o644)  # a copy that lost its mode
    broken = cw("doctor")
    assert broken.returncode == 1
    found = problems(broken)
    assert any("1 worker(s) run cloudpickle 2.0.0" in line for line in found), broken.stdout
    assert any("the workers' keys" in line and "chmod 600" in line for line in found), broken.stdout
    secret.chmod(0o600)
    master.kill()
    master.wait(10)
    gone = cw("doctor")
    assert gone.returncode == 1
    assert [line for line in problems(gone) if "does not answer" in line], gone.stdout
    assert "Traceback" not in gone.stderr + broken.stderr + healthy.stderr


def test_status_why_says_what_holds_queued_jobs(procs):
    _, port = procs.master()
    with ClusterExecutor("127.0.0.1", port, connect_timeout=20) as ex:
        waiting = [ex.submit(jobs.sleep, 0.01) for _ in range(3)]
        wait_for(lambda: query_status("127.0.0.1", port)["totals"]["queued"] == 3, what="3 jobs queued")
        done = cw("status", "--why", "--cluster", "default")
        assert done.returncode == 0, done.stderr
        assert "3 job(s) wait" in done.stdout and "no worker is registered" in done.stdout
        procs.worker(port, "--time-left", "30")
        wait_workers(port, 1)
        assert [f.result(30) for f in waiting] == [None] * 3
        long_job = ex.submit(jobs.sleep, 0.01, expected=600)
        wait_for(lambda: query_status("127.0.0.1", port)["parked"] == 1, what="the executor parked")
        done = cw("status", "--why")
        assert "could finish no queued job in time" in done.stdout and "at most" in done.stdout, done.stdout
        long_job.cancel()
