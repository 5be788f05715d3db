"""The cw image under a real podman: configured by CW_* variables, serving a client
on the host, draining on ``podman stop``; and the ``cw docker`` launcher."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time

import cloudpickle
import pytest
from conftest import ROOT, wait_for, wait_workers
from docblocks import Session, run_bed_blocks

from cw.client import ClientThread, ClusterExecutor
from cw.launch import query_status

from .conftest import free_port, ours, podman

# The image build (and, once per machine, debootstrap) happens inside the
# first test that needs it.
pytestmark = [pytest.mark.container, pytest.mark.timeout(360)]

HOST_PIDNS = os.readlink("/proc/self/ns/pid")
# The containers see none of tests/: the job functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def inside():
    """Where a job ran: the image's marker, the uid, the pid namespace."""
    import os

    marker = open("/etc/cw-image").read().strip() if os.path.exists("/etc/cw-image") else None
    return marker, os.getuid(), os.readlink("/proc/self/ns/pid")


def slow(i, seconds):
    import os
    import time

    time.sleep(seconds)
    return i, os.readlink("/proc/self/ns/pid")


@pytest.fixture
def shared(tmp_path, cw_home):
    """A CW_HOME and a log directory of ours, mounted at the same path inside
    containers as outside, which run as we do (``--user UID:GID``, as
    docs/containers.md says): cw trusts no CW_HOME of another user."""
    home, logs = cw_home, tmp_path / "logs"
    for path in (home, logs):
        path.mkdir(mode=0o700)
    args = ("--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{home}:{home}", "-v", f"{logs}:/var/log/cw")
    return {"home": home, "logs": logs, "args": args, "env": {"CW_HOME": str(home)}}


def _master(containers, shared, port, **env) -> str:
    name = containers.start(*shared["args"], env={**shared["env"], "CW_PORT": port, **env})
    mjson = shared["home"] / "default" / "master.json"
    wait_for(lambda: mjson.exists() or containers.state(name)[0] != "running", timeout=30,
             what="master.json")
    assert json.loads(mjson.read_text())["port"] == port, podman("logs", name).stderr
    return name


def test_master_and_two_worker_containers_serve_a_host_client(containers, shared):
    port = free_port()
    _master(containers, shared, port, CW_NO_WORKER="1")
    env = {**shared["env"], "CW_MASTER_ADDRESS": "127.0.0.1", "CW_PORT": port, "CW_WORKERS": "2"}
    for _ in range(2):
        containers.start(*shared["args"], env=env)
    wait_workers(port, 2, executors=4)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=30) as ex:
        where = list(ex.map(lambda _: inside(), range(200)))
    markers, uids, pidns = zip(*where)
    assert set(markers) == {"cw 0.1.0"}  # the file only the image has
    assert set(uids) == {os.getuid()}  # as --user said
    assert len(set(pidns)) == 2 and HOST_PIDNS not in pidns  # two worker containers did the work
    logs = sorted(p.name.split("-")[0] for p in shared["logs"].iterdir())
    assert logs == ["master", "worker", "worker"]


def test_the_image_runs_as_a_user_not_root(containers):
    done = containers.run("--entrypoint", "id")
    assert done.returncode == 0 and done.stdout.startswith("uid=1000(cw) gid=1000(cw)"), done.stderr


def test_conflicting_settings_fail_at_once_with_a_message(containers):
    began = time.monotonic()
    done = containers.run(env={"CW_MASTER_ADDRESS": "head", "CW_NO_WORKER": "1"}, timeout=60)
    assert done.returncode == 2
    assert "CW_MASTER_ADDRESS=head runs only a worker, and CW_NO_WORKER=1" in done.stderr
    assert "starting" not in done.stderr  # nothing was started
    assert time.monotonic() - began < 20


def test_podman_stop_drains_a_worker_container_and_loses_no_job(containers, shared):
    port = free_port()
    both = _master(containers, shared, port, CW_WORKERS="1")  # a master and a worker
    env = {**shared["env"], "CW_MASTER_ADDRESS": "127.0.0.1", "CW_PORT": port}
    worker = containers.start(*shared["args"], env=env)
    wait_workers(port, 2)
    got = collections.defaultdict(list)
    lock = threading.Lock()

    def collect(jobid, result):
        with lock:
            got[jobid].append(result)

    n = 40
    with ClientThread(collect, "127.0.0.1", port, connect_timeout=30) as ct:
        for i in range(n):
            ct.submit(i, slow, i, 0.25)
        wait_for(lambda: len(got) >= 4 and query_status("127.0.0.1", port)["running"] >= 2,
                 timeout=30, what="both workers busy")
        began = time.monotonic()
        podman("stop", "--time", "30", worker, timeout=60)  # SIGTERM, then (late) SIGKILL
        stopped_in = time.monotonic() - began
        ct.wait()
    assert containers.state(worker) == ("exited", 0)  # it drained; no SIGKILL (137)
    assert stopped_in < 10
    assert sorted(got) == list(range(n)) and all(len(v) == 1 for v in got.values())  # exactly once
    assert all(v[0][0] == i for i, v in got.items())
    assert len({v[0][1] for v in got.values()}) == 2  # the stopped container had run jobs too
    # The master-and-worker container stops cleanly too: worker first, then master.
    podman("stop", "--time", "30", both, timeout=60)
    assert containers.state(both) == ("exited", 0)
    entry = podman("logs", both).stderr
    assert entry.index("stopping the worker") < entry.index("stopping the master") < entry.index("stopped\n")


def cw_cli(*args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "cw.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=timeout)


def test_cw_docker_start_status_stop(containers, cw_image, cw_home):
    env = {"CW_CONTAINER_ENGINE": "podman", "CW_HOME": str(cw_home)}
    started = cw_cli("docker", "start", "-n", "2", "--image", cw_image, "--port", "0",
                     "--procs-per-worker", "2", env=env)
    assert started.returncode == 0, started.stderr
    port = int(started.stdout.split("127.0.0.1:")[1].split(";")[0])
    try:
        with ClusterExecutor("127.0.0.1", port, connect_timeout=30) as ex:
            where = list(ex.map(lambda _: inside(), range(100)))
        assert {w[0] for w in where} == {"cw 0.1.0"} and len({w[2] for w in where}) == 2
        status = cw_cli("docker", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count(" running\n") == 3 and "workers registered: 2" in status.stdout
        again = cw_cli("docker", "start", "-n", "1", "--image", cw_image, env=env)
        assert again.returncode != 0 and "already has a master container" in again.stderr
    finally:
        stopped = cw_cli("docker", "stop", env=env)
    assert stopped.returncode == 0 and "stopped 3 container(s)" in stopped.stdout
    assert ours() == []
    assert sorted(p.name.split("-")[0] for p in (cw_home / "default" / "logs").iterdir()) == [
        "master", "worker", "worker"]


def test_the_containers_guide_runs(containers, cw_image, tmp_path):
    """docs/containers.md's run=container blocks, as a reader types them:
    the guide's image is called ``cw``, so this checkout's image is, meanwhile."""
    if podman("image", "exists", "localhost/cw:latest", check=False).returncode == 0:
        pytest.skip("this machine has its own image localhost/cw:latest, which the guide's "
                    "blocks would run instead of this checkout's")
    podman("tag", cw_image, "localhost/cw:latest")
    session = Session(tmp_path)
    try:
        run_bed_blocks(ROOT / "docs" / "containers.md", "container", session)
    finally:
        leaked = session.close()
        podman("untag", "localhost/cw:latest", "localhost/cw:latest", check=False)  # that name only
    assert not leaked, "the guide's blocks left processes behind:\n" + "\n".join(leaked)
    assert ours() == []


def net_namespace(_):
    import os

    return os.readlink("/proc/self/ns/net")


def test_on_a_bridge_network_only_the_master_port_is_published(containers, cw_image, cw_home):
    network = f"cwtest-{os.urandom(3).hex()}"
    podman("network", "create", network)
    env = {"CW_CONTAINER_ENGINE": "podman", "CW_HOME": str(cw_home)}
    port = free_port()
    try:
        started = cw_cli("docker", "start", "-n", "2", "--image", cw_image, "--network", network,
                         "--port", str(port), env=env)
        assert started.returncode == 0, started.stderr
        published = {}
        for name in ours():
            out = podman("inspect", "--format", "{{json .HostConfig.PortBindings}}", name).stdout
            published[name.split("-")[2]] = {k: v for k, v in (json.loads(out) or {}).items() if v}
        assert published["master"] == {f"{port}/tcp": [{"HostIp": "", "HostPort": str(port)}]}
        assert published["worker"] == {}  # workers connect out: nothing of theirs is reachable
        with ClusterExecutor("127.0.0.1", port, connect_timeout=30) as ex:
            nets = set(ex.map(net_namespace, range(50)))
        assert os.readlink("/proc/self/ns/net") not in nets  # not the host's network
    finally:
        stopped = cw_cli("docker", "stop", env=env)
        podman("network", "rm", "--force", network, check=False)
    assert stopped.returncode == 0 and "stopped 3 container(s)" in stopped.stdout


def test_cw_allocate_with_the_docker_launcher(containers, cw_image, cw_home, monkeypatch):
    import cw

    monkeypatch.delenv("CW_CONTAINER_ENGINE", raising=False)  # stop must find podman by itself
    with cw.allocate(2, launcher="docker", image=cw_image, engine="podman", port=0) as info:
        assert len(ours()) == 3
        with ClusterExecutor("127.0.0.1", info["port"], connect_timeout=30) as ex:
            assert {w[0] for w in ex.map(lambda _: inside(), range(20))} == {"cw 0.1.0"}
    assert ours() == []
