"""master.json: a master in a container (its pid is not ours to check), and malformed files."""
import socket

import pytest

from cw.cluster import cluster_dir, pid_namespace, read_master, write_json
from cw.discovery import find_master
from cw.errors import ClusterError


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


@pytest.mark.parametrize("content, says", [
    ('{"host": "127.0.0.1", "port": "notaport"}', "port 'notaport' is not a port"),
    ('{"host": "127.0.0.1", "port": 99999}', "port 99999 is not a port"),
    ('{"host": "a host", "port": 5494}', "host 'a host' is not a host name"),
    ('{"host": "127.0.0.1", "port": 54', "is not valid JSON"),
    ('[1, 2]', "holds no JSON object"),
])
def test_a_malformed_master_json_is_named_not_taken_for_no_master(tmp_path, monkeypatch, content, says):
    monkeypatch.setenv("CW_HOME", str(tmp_path))
    monkeypatch.delenv("CW_MASTER_ADDRESS", raising=False)
    path = cluster_dir(create=True) / "master.json"
    path.write_text(content)
    assert read_master() is None
    with pytest.raises(ClusterError, match=says) as refused:
        find_master()
    assert str(path) in str(refused.value)
    assert find_master("h", 7) == ("h", 7)  # told where: the file does not matter


def test_executors_per_worker_are_bounded():
    import click

    from cw.cli_common import MAX_PROCS, Procs

    assert Procs().convert("4", None, None) == 4
    for bad in ("0", str(MAX_PROCS + 1), "many"):
        with pytest.raises(click.BadParameter):
            Procs().convert(bad, None, None)
