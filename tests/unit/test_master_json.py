"""master.json written by a master in a container: its pid is not ours to check."""
import socket

from cw.cluster import cluster_dir, pid_namespace, read_master, write_json


def _write(pidns):
    cdir = cluster_dir(create=True)
    info = {"host": "localhost", "port": 5494, "pid": 2 ** 22 + 1, "hostname": socket.gethostname()}
    if pidns is not None:
        info["pidns"] = pidns
    write_json(cdir / "master.json", info)


def test_a_dead_pid_in_our_pid_namespace_is_a_stale_master(tmp_path, monkeypatch):
    monkeypatch.setenv("CW_HOME", str(tmp_path))
    _write(pid_namespace())
    assert read_master() is None
    _write(None)  # written by an older cw: same rule
    assert read_master() is None


def test_a_pid_from_another_pid_namespace_is_not_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("CW_HOME", str(tmp_path))
    _write("pid:[1]")  # a master in a container on the host network
    assert read_master()["port"] == 5494
