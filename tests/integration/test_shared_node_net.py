"""Another user on the same node: a squatter on the master's port, idle
connections that exhaust the master's descriptors, and the dashboard."""
import os
import socket
import stat
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import pytest
import zmq
from attacks import FLOOD
from conftest import ROOT, master_json, wait_for

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


# -- the dashboard -------------------------------------------------------------

def master_logged(procs, cw_home, tmp_path, *extra):
    """A master whose stderr goes to a file (tracebacks land there), and its master.json."""
    err = open(tmp_path / "master.stderr", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cw.master", "--host", "127.0.0.1", "--port", "0",
                             *extra], cwd=ROOT, stdin=subprocess.DEVNULL, stderr=err)
    err.close()
    procs.popens.append(proc)
    procs.observe()
    return proc, master_json(proc, cw_home / "default" / "master.json"), tmp_path / "master.stderr"


def http_get(url, host=None):
    try:
        req = urllib.request.Request(url, headers={"Host": host} if host else {})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_dashboard_answers_only_with_its_token(procs, cw_home, tmp_path):
    _, info, _ = master_logged(procs, cw_home, tmp_path, "--http-port", "0")
    url = info["http"]
    base, token = url.rstrip("/").rsplit("/", 1)
    assert len(token) >= 40  # secrets.token_urlsafe(32)
    mjson = cw_home / "default" / "master.json"  # the only file holding it: private
    assert stat.S_IMODE(mjson.stat().st_mode) == 0o600
    assert stat.S_IMODE(mjson.parent.stat().st_mode) == 0o700
    for path in ("/", "/api/status", "/index.html", f"/{token[:-1]}/api/status", f"/x{token}/"):
        assert http_get(base + path)[0] == 403, path
    assert http_get(url)[0] == 200 and http_get(url + "api/status")[0] == 200
    assert http_get(base + "/" + token)[0] == 200  # redirected to /TOKEN/
    done = cw_cli("status")
    assert url in done.stdout  # where the owner finds it


def test_idle_connections_cost_the_dashboard_no_thread_and_leave_no_traceback(procs, cw_home, tmp_path):
    proc, info, stderr = master_logged(procs, cw_home, tmp_path, "--http-port", "0")
    url = info["http"]
    port = int(url.split(":")[2].split("/")[0])
    assert http_get(url + "api/status")[0] == 200
    master = psutil.Process(proc.pid)
    threads = master.num_threads()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(200)]
    try:
        assert http_get(url + "api/status")[0] == 200  # served while 200 wait
        assert master.num_threads() <= threads
        for sock in idle[:20]:  # requests abandoned halfway, then reset
            sock.sendall(f"GET /{url.rsplit('/', 2)[1]}/api/status HTTP/1.1\r\nHost: 127.0".encode())
        time.sleep(0.2)
        for sock in idle[20:40]:  # a full request, the answer never read: reset
            sock.sendall(f"GET /{url.rsplit('/', 2)[1]}/api/status HTTP/1.0\r\n\r\n".encode())
    finally:
        for sock in idle:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
    assert http_get(url + "api/status")[0] == 200
    assert master.num_threads() <= threads
    logs = [stderr, *(cw_home / "default" / "logs").glob("master-*.log")]
    text = "".join(path.read_text() for path in logs)
    assert "Traceback" not in text and "dashboard at" in text


# -- idle connections against the master's descriptors ------------------------


LIMIT = 256  # the master's descriptors: the flood outnumbers them eightfold


def test_idle_connections_leave_the_master_room_for_admitted_peers(procs, cw_home):
    """2,000 unauthenticated connections, held and redialled, against a master
    limited to 256 descriptors: a worker already there keeps working, a new
    client gets in and runs jobs, `cw status` answers; the log says so once."""
    import jobs
    from conftest import wait_workers

    from cw.master.guard import reserve

    master, port = procs.master()
    psutil.Process(master.pid).rlimit(psutil.RLIMIT_NOFILE, (LIMIT, LIMIT))
    procs.worker(port)
    wait_workers(port, 1)
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, str(port), "2000"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert flood.stdout.readline().startswith("holding")
        # At full strength: past the reserve the master keeps for admitted peers.
        wait_for(lambda: psutil.Process(master.pid).num_fds() >= LIMIT - reserve(LIMIT) - 16, timeout=60,
                 what="the master holding the flood's connections")
        start = time.monotonic()
        with ClusterExecutor("127.0.0.1", port, connect_timeout=30) as ex:
            assert list(ex.map(jobs.square, range(10), timeout=60)) == [i * i for i in range(10)]
        took = time.monotonic() - start
        print(f"a new client ran its jobs in {took:.2f} s")
        done = cw_cli("status", "--timeout", "30", CW_PORT=str(port))
        assert done.returncode == 0 and "10 done" in done.stdout, done.stderr
        assert psutil.Process(master.pid).num_fds() <= LIMIT
    finally:
        flood.kill()
        flood.wait(10)
        flood.stdout.close()
    log = "".join(p.read_text() for p in (cw_home / "default" / "logs").glob("master-*.log"))
    said = [line for line in log.splitlines() if "unauthenticated connections" in line]
    assert 1 <= len(said) <= 2, said  # once a minute at most, not once per connection
