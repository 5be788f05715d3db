"""./slurm.py -d IMAGE on the SLURM test bed: workers in podman containers inside SLURM jobs."""
from __future__ import annotations

import getpass
import os
import subprocess
import sys

import cloudpickle
import pytest
from conftest import ROOT, wait_for

from cw.client import SlurmExecutor

from .conftest import ours, podman

pytestmark = [pytest.mark.container, pytest.mark.slurm, pytest.mark.timeout(400)]

HOST_PIDNS = os.readlink("/proc/self/ns/pid")
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inside():
    """The image's marker, SLURM's node, the pid namespace, the cwd, a --docker-args variable."""
    import os

    marker = open("/etc/cw-image").read().strip() if os.path.exists("/etc/cw-image") else None
    return (marker, os.environ.get("SLURMD_NODENAME"), os.readlink("/proc/self/ns/pid"), os.getcwd(),
            os.environ.get("CW_TEST_ARG"))


def slurm_py(*args, timeout=240):
    return subprocess.run([sys.executable, "slurm.py", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def squeue():
    out = subprocess.run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%j"],
                         capture_output=True, text=True, timeout=30).stdout
    return out.split()


def test_slurm_runs_workers_in_podman_containers(slurm_home, cw_image, containers):
    done = slurm_py("-n", "2", "-d", cw_image, "--container-engine", "podman",
                    "--docker-args", "--env CW_TEST_ARG=1", "start")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 worker(s) registered" in done.stdout
    running = ours()
    assert len(running) == 2  # one container per worker job
    with SlurmExecutor(connect_timeout=30) as ex:
        where = list(ex.map(lambda _: inside(), range(200)))
    markers, nodes, pidns, cwds, args = zip(*where)
    assert set(markers) == {"cw 0.1.0"}  # every job ran inside the image
    assert set(nodes) <= {"node1", "node2", "node3"}  # SLURM's variables reach the container
    assert len(set(pidns)) == 2 and HOST_PIDNS not in pidns
    assert set(cwds) == {str(ROOT)}  # the shared filesystem at the same path
    assert set(args) == {"1"}  # --docker-args reached `podman run`
    stop = slurm_py("stop")
    assert stop.returncode == 0, stop.stderr
    assert squeue() == []
    # The workers drained on SLURM's SIGTERM, so `podman run --rm` removed them.
    wait_for(lambda: ours() == [], timeout=30, what="worker containers gone")


def test_an_image_whose_entrypoint_is_python_runs_workers_as_the_originals_did(slurm_home, cw_image,
                                                                               containers, tmp_path):
    """The original ran `docker run IMAGE -m cw.worker ...`: images made for it
    say ENTRYPOINT python. cw's image runs the command it is given. Both work."""
    old = "localhost/cw-test-python-entrypoint:latest"
    (tmp_path / "Containerfile").write_text(f'FROM {cw_image}\nENTRYPOINT ["python"]\n')
    podman("build", "-t", old, str(tmp_path), timeout=180)
    try:
        done = slurm_py("-n", "1", "-d", old, "--container-engine", "podman", "start")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 worker(s) registered" in done.stdout
        with SlurmExecutor(connect_timeout=30) as ex:
            assert ex.submit(inside).result(60)[0] == "cw 0.1.0"  # ran inside the image
        stop = slurm_py("stop")
        assert stop.returncode == 0, stop.stderr
        assert squeue() == []
        wait_for(lambda: ours() == [], timeout=30, what="worker containers gone")
    finally:
        podman("rmi", "--force", old, check=False)
