"""Another user on the same node: a squatter on the master's port, idle
connections that exhaust the master's descriptors, and the dashboard."""
import os
import socket
import subprocess
import sys
import time

import pytest
import zmq
from conftest import ROOT

from cw import SecurityError
from cw.client import ClusterExecutor
from cw.cluster import cluster_dir
from cw.errors import MasterUnavailableError


def cw_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "cw.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, **env})


@pytest.fixture
def squatter():
    """A ZeroMQ ROUTER without CURVE on a free port of 127.0.0.1: a fake master."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, port
    sock.close()


def test_a_squatter_without_curve_is_named_and_told_nothing(cw_home, squatter):
    sock, port = squatter
    start = time.monotonic()
    with pytest.raises(SecurityError, match="does not speak CurveZMQ") as refused:
        ClusterExecutor("127.0.0.1", port, connect_timeout=20)
    assert time.monotonic() - start < 10  # at once, not at the timeout
    said = str(refused.value)
    assert f"127.0.0.1:{port}" in said and "not a secure cw master" in said
    for advice in ("both ends", "CW_INSECURE=1", "set --insecure", "use --insecure"):
        assert advice not in said
    assert sock.poll(500) == 0  # the fake master received nothing of the owner's
    done = cw_cli("status", CW_PORT=str(port))  # and `cw status` says the same, in one line
    assert done.returncode == 1 and "does not speak CurveZMQ" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "both ends" not in done.stderr


def test_a_silent_listener_is_said_to_have_taken_the_connection(cw_home):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(MasterUnavailableError, match="took the connection but completed no handshake"):
            ClusterExecutor("127.0.0.1", port, connect_timeout=1)


def test_no_master_json_is_said_not_replaced_by_the_default_port(cw_home):
    path = cluster_dir(create=True) / "master.json"
    start = time.monotonic()
    with pytest.raises(MasterUnavailableError, match="does not exist") as refused:
        ClusterExecutor(connect_timeout=20)
    assert time.monotonic() - start < 5  # said, not waited out at 127.0.0.1:5494
    assert str(path) in str(refused.value) and "5494" not in str(refused.value)
    done = cw_cli("status")
    assert done.returncode == 1 and str(path) in done.stderr and "Traceback" not in done.stderr
    path.write_text('{"host": "127.0.0.1", "port": 5494, "pid": 4194304, "hostname": "%s"}'
                    % socket.gethostname())  # its master is gone
    with pytest.raises(MasterUnavailableError, match="pid 4194304, which is no longer running"):
        ClusterExecutor(connect_timeout=20)


def test_local_start_takes_a_free_port_when_the_default_is_squatted(cw_home):
    from cw.launch import local

    with socket.socket() as squat:
        squat.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squat.bind(("127.0.0.1", 5494))
        except OSError:
            pass  # someone holds it already: just as good a squatter
        else:
            squat.listen()
        try:
            info = local.start(0)
            assert info["port"] != 5494
            with ClusterExecutor(connect_timeout=10):  # found through master.json
                pass
        finally:
            local.stop()
