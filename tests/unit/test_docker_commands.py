"""Container commands: pure functions, checked against golden files."""
import shlex
from pathlib import Path

import pytest

from cw.errors import ClusterError
from cw.launch import docker
from cw.launch.slurm import Options as SlurmOptions
from cw.launch.slurm import container_command

GOLDEN = Path(__file__).parent / "golden"
ODD = "/shared/my project/it's \"here\""
USER = docker.User(uid=1234, gid=56, home=f"{ODD}/cw home", cwd=ODD)


def test_worker_container_command_quotes_every_value():
    opts = docker.Options(image="site/cw:1", cluster="c1", engine="docker", port=6000, procs=3,
                          args="--cpus 2 --memory '4g'")
    cmd = docker.run_command("worker", "cw-c1-worker-ab12", opts, USER)
    assert shlex.join(cmd) + "\n" == (GOLDEN / "docker-worker.txt").read_text()
    assert shlex.split(shlex.join(cmd)) == cmd
    assert cmd[-3:] == ["--memory", "4g", "site/cw:1"]  # extra args, then the image last


def test_master_container_on_the_host_network_publishes_nothing():
    opts = docker.Options(image="cw", cluster="c1", engine="podman", port=0, insecure=True)
    cmd = docker.run_command("master", "cw-c1-master", opts, USER)
    assert "--net=host" in cmd and "-p" not in cmd
    assert _env(cmd) == {"CW_HOME": USER.home, "CW_CLUSTER": "c1", "CW_PORT": "0",
                         "CW_INSECURE": "1", "CW_NO_WORKER": "1"}
    assert "--userns=keep-id" in cmd  # rootless podman keeps the user's uid
    assert f"{USER.home}/c1/logs:/var/log/cw" in cmd


def test_on_a_named_network_only_the_master_port_is_published():
    opts = docker.Options(image="cw", cluster="c1", port=5494, network="cwnet")
    master = docker.run_command("master", "cw-c1-master", opts, USER)
    worker = docker.run_command("worker", "cw-c1-worker-1", opts, USER, master_address="cw-c1-master")
    assert master[master.index("-p") + 1] == "5494:5494"
    assert "-p" not in worker and "--net=host" not in worker
    assert _env(worker)["CW_MASTER_ADDRESS"] == "cw-c1-master"
    assert worker[worker.index("--network") + 1] == "cwnet"


def test_containers_run_as_the_calling_user_and_are_labelled():
    root = docker.User(uid=0, gid=0, home="/h", cwd="/w")
    cmd = docker.run_command("worker", "n", docker.Options(image="cw", engine="podman"), root)
    assert cmd[cmd.index("--user") + 1] == "0:0" and "--userns=keep-id" not in cmd
    assert "cw.cluster=default" in cmd and "cw.role=worker" in cmd


def test_stop_list_and_remove_commands():
    assert docker.list_command("podman", "c1") == [
        "podman", "ps", "--all", "--filter", "label=cw.cluster=c1", "--format", "{{json .}}"]
    assert docker.stop_command("docker", ["a", "b"], 40) == ["docker", "stop", "--time", "40", "a", "b"]
    assert docker.remove_command("podman", ["a"]) == ["podman", "rm", "--force", "a"]


def test_unknown_engine_lists_the_choices():
    with pytest.raises(ClusterError, match="unknown container engine 'lxc'; choose from: docker, podman"):
        docker.list_command("lxc", "c1")


def test_start_without_an_image_says_how_to_build_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CW_HOME", str(tmp_path))
    with pytest.raises(ClusterError, match="docker build -f docker/Dockerfile"):
        docker.start(1, image=None)


def test_slurm_worker_container_runs_as_the_user_with_slurm_facts(monkeypatch, tmp_path):
    monkeypatch.setenv("CW_HOME", str(tmp_path / "cw home"))
    opts = SlurmOptions(cluster="c1", docker_image="site/cw:1", container_engine="podman")
    cmd = container_command(["python", "-m", "cw.worker"], opts, ODD, uid=1234, gid=56)
    assert cmd[cmd.index("--user") + 1] == "1234:56" and "--userns=keep-id" in cmd
    assert ["-e", "SLURMD_NODENAME"] == cmd[cmd.index("SLURMD_NODENAME") - 1:cmd.index("SLURMD_NODENAME") + 1]
    assert f"{tmp_path}/cw home:{tmp_path}/cw home" in cmd and f"{ODD}:{ODD}" in cmd
    assert cmd[-4:] == ["site/cw:1", "python", "-m", "cw.worker"]


def _env(cmd):
    return dict(cmd[i + 1].split("=", 1) for i, arg in enumerate(cmd) if arg == "-e")


def test_both_engines_container_lists_are_read():
    podman_ps = ('[\n {"Names": ["cw-c1-worker-1"], "State": "exited", '
                 '"Labels": {"cw.cluster": "c1", "cw.role": "worker"}},\n'
                 ' {"Names": ["cw-c1-master"], "State": "running", '
                 '"Labels": {"cw.cluster": "c1", "cw.role": "master"}}\n]\n')
    docker_ps = ('{"Names":"cw-c1-worker-1","State":"exited","Labels":"cw.cluster=c1,cw.role=worker"}\n'
                 '{"Names":"cw-c1-master","State":"running","Labels":"cw.role=master,cw.cluster=c1"}\n')
    want = [{"name": "cw-c1-master", "role": "master", "state": "running"},
            {"name": "cw-c1-worker-1", "role": "worker", "state": "exited"}]
    assert docker.parse_ps(podman_ps) == want
    assert docker.parse_ps(docker_ps) == want
    assert docker.parse_ps("[]\n") == docker.parse_ps("") == []


def test_stop_and_status_use_the_engine_that_started_the_cluster(tmp_path, monkeypatch):
    from cw.cluster import cluster_dir, write_json

    monkeypatch.setenv("CW_HOME", str(tmp_path))
    monkeypatch.delenv("CW_CONTAINER_ENGINE", raising=False)
    assert docker._engine_name(None, "c1") == "docker"
    write_json(cluster_dir("c1", create=True) / "engine.json", {"engine": "podman"})
    assert docker._engine_name(None, "c1") == "podman"
    assert docker._engine_name("docker", "c1") == "docker"  # an explicit choice wins
    monkeypatch.setenv("CW_CONTAINER_ENGINE", "docker")
    assert docker._engine_name(None, "c1") == "docker"
