"""sbatch commands and batch scripts: pure functions, checked against golden files."""
import shlex
from pathlib import Path

import pytest

from cw import squeue
from cw.errors import ClusterError
from cw.launch.slurm import Options, check_time, job_script, sbatch_command, worker_command

GOLDEN = Path(__file__).parent / "golden"
ODD = "/shared/my project/it's \"here\""


def test_worker_script_quotes_every_value(monkeypatch):
    monkeypatch.setattr("sys.executable", f"{ODD}/bin/python")
    opts = Options(cluster="c1", procs=4, grace=12.5)
    script = job_script(worker_command("node 1", 5494, opts, ODD))
    assert script == (GOLDEN / "worker.sh").read_text()
    # The shell reads the command back exactly as built.
    assert shlex.split(script.splitlines()[1])[1:3] == [f"{ODD}/bin/python", "-m"]


def test_container_worker_runs_the_same_command_in_the_image(monkeypatch, tmp_path):
    monkeypatch.setenv("CW_HOME", str(tmp_path / "cw home"))
    opts = Options(cluster="c1", docker_image="site/cw:1", docker_args="--gpus all",
                   container_engine="podman", isolated=True)
    cmd = worker_command("node1", 7000, opts, ODD)
    assert cmd[:4] == ["srun", "--kill-on-bad-exit=0", "podman", "run"]
    assert "--net=host" in cmd and f"{ODD}:{ODD}" in cmd and "--gpus" in cmd
    image = cmd.index("site/cw:1")
    # python as the entrypoint: cw's image and the original's (ENTRYPOINT python) alike
    assert cmd[image - 4:image - 2] == ["--entrypoint", "python"]  # before --docker-args (--gpus all)
    assert cmd[image + 1:image + 3] == ["-m", "cw.worker"]


def test_a_users_own_entrypoint_is_given_the_whole_command(monkeypatch, tmp_path):
    monkeypatch.setenv("CW_HOME", str(tmp_path / "cw home"))
    opts = Options(cluster="c1", docker_image="site/cw:1", docker_args="--entrypoint /bin/env")
    cmd = worker_command("node1", 7000, opts, ODD)
    image = cmd.index("site/cw:1")
    assert cmd.count("--entrypoint") == 1 and cmd[image + 1:image + 4] == ["python", "-m", "cw.worker"]


def test_sbatch_command_carries_every_option():
    cmd = sbatch_command(job_name="cw-worker-c1", output=f"{ODD}/w-%A_%a.log", partition="short",
                         time="1-02:00:00", array=3, signal="B:TERM@45",
                         extra=["--comment=x y", "--mem=2G"])
    assert cmd == ["sbatch", "--parsable", "--job-name=cw-worker-c1", f"--output={ODD}/w-%A_%a.log",
                   "--partition=short", "--time=1-02:00:00", "--array=0-2", "--signal=B:TERM@45",
                   "--comment=x y", "--mem=2G"]
    isolated = sbatch_command(job_name="j", output="o", nodes=4)
    assert isolated[-2:] == ["--nodes=4", "--ntasks-per-node=1"]


@pytest.mark.parametrize("good", ["30", "5:00", "2:00:00", "1-0", "1-12:00", "3-00:00:00"])
def test_slurm_time_formats(good):
    assert check_time(good) == good


@pytest.mark.parametrize("bad", ["soon", "1h", "-1", "1:2:3:4", ""])
def test_bad_slurm_time_is_refused(bad):
    with pytest.raises(ClusterError, match="invalid --time"):
        check_time(bad)


@pytest.mark.parametrize("text, seconds", [("45:07", 2707), ("1:00:00", 3600), ("2-03:04:05", 183845),
                                           ("UNLIMITED", None), ("NOT_SET", None), ("", None)])
def test_squeues_time_left_is_read_in_seconds(text, seconds):
    assert squeue.parse_time_left(text) == seconds


def test_time_left_comes_from_slurms_end_time_where_it_is_set_and_is_none_outside_slurm():
    import time

    assert squeue.time_left({}) is None
    left = squeue.time_left({"SLURM_JOB_ID": "7", "SLURM_JOB_END_TIME": str(int(time.time()) + 600)})
    assert 590 < left <= 600


def scaler_for(lo, hi, pending=0, max_submit=None):
    from cw.launch.scaler import Scaler, State

    scaler = Scaler.__new__(Scaler)  # no cluster directory, no sacctmgr: the arithmetic alone
    scaler.config = {"min": lo, "max": hi, "procs": 2, "max_pending": 4}
    scaler.state, scaler.max_submit = State(lo, hi, pending=pending), max_submit
    return scaler


def snap(queued, idle=0, busy=0, parked=0):
    executors = [{"running": 0, "draining": False}] * idle + [{"running": 1, "draining": False}] * busy
    return {"totals": {"queued": queued}, "executors": executors, "parked": parked}


def test_the_scaler_asks_for_what_the_queue_needs_within_its_bounds():
    assert scaler_for(0, 3).wanted(snap(0), 0, 0) == (0, False)  # no work, no worker
    assert scaler_for(2, 5).wanted(snap(0), 0, 0) == (2, True)  # MIN first, kept without idle timeout
    assert scaler_for(0, 3).wanted(snap(200, busy=2), 1, 1) == (2, False)  # capped by MAX
    assert scaler_for(0, 10).wanted(snap(200, busy=2), 0, 0) == (4, False)  # and by the pending cap
    assert scaler_for(0, 10).wanted(snap(5, idle=1), 0, 0) == (0, False)  # an idle executor takes them
    assert scaler_for(0, 10).wanted(snap(5, idle=1, parked=1), 0, 0) == (3, False)  # unless it is parked
    assert scaler_for(0, 10, pending=2).wanted(snap(5, busy=2), 2, 2)[0] == 1  # those coming count
    assert scaler_for(0, 10, max_submit=3).wanted(snap(200, busy=2), 0, 2)[0] == 1  # MaxSubmit
