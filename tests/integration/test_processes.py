"""Master and worker processes: start, serve, survive bad input, stop cleanly."""
import json
import os
import signal
import socket
import subprocess
import sys

import jobs
import psutil
import pytest
import zmq
from conftest import ROOT, descendants, stop_gracefully, wait_for, wait_workers

from cw.client import ClusterExecutor
from cw.cluster import cluster_dir
from cw.errors import WorkerLostError
from cw.launch import query_status
from cw.protocol import MAGIC, PROTOCOL_VERSION
from cw.security import apply_client, client_keys


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_master_stops_on_signal_exits_0_and_removes_master_json(procs, cw_home, sig):
    proc, port = procs.master()
    mjson = cw_home / "default" / "master.json"
    info = json.loads(mjson.read_text())
    assert info["port"] == port and info["pid"] == proc.pid and info["protocol"] == PROTOCOL_VERSION
    assert info["host"] == "127.0.0.1"
    assert oct((cw_home / "default").stat().st_mode & 0o777) == "0o700"
    proc.send_signal(sig)
    assert proc.wait(20) == 0
    assert not mjson.exists()


def test_master_on_a_busy_port_is_a_one_line_error(cw_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "cw.master", "--host", "127.0.0.1", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["-1", "soon", "5"])
def test_master_refuses_a_bad_spin_before_binding(cw_home, value):
    done = subprocess.run([sys.executable, "-m", "cw.master", "--port", "0", "--spin", value],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Invalid value for '--spin'" in done.stderr and "Traceback" not in done.stderr
    assert not (cw_home / "default" / "master.json").exists()


def test_worker_restarts_a_killed_executor_and_its_job_is_requeued(cluster, procs):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        first = ex.submit(jobs.pid).result(30)
        slow = ex.submit(jobs.sleep, 1.5, "survived")
        wait_for(slow.running, what="the slow job to start")
        os.kill(first, signal.SIGKILL)
        assert slow.result(60) == "survived"
        assert ex.submit(jobs.pid).result(30) != first


def test_job_that_kills_its_executor_fails_after_retries(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10, retries=1) as ex:
        with pytest.raises(WorkerLostError, match="died running this job 2 times"):
            ex.submit(jobs.exit_hard, 3).result(60)
        assert ex.submit(jobs.square, 6).result(60) == 36


def test_worker_sigterm_exits_0_and_takes_its_executors(procs):
    _, port = procs.master()
    worker = procs.worker(port, procs=2)
    wait_workers(port, 1, executors=2, spares=1)
    children = descendants(worker.pid)
    assert len(children) == 3  # and the express spare
    assert stop_gracefully(worker) == 0
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in children if psutil.pid_exists(p)], timeout=10)
    assert not alive
    wait_for(lambda: query_status("127.0.0.1", port)["executors"] == [], what="executors to leave")


def test_killed_supervisor_leaves_no_orphan_executors(procs):
    _, port = procs.master()
    worker = procs.worker(port, procs=2)
    wait_workers(port, 1, executors=2)
    children = [psutil.Process(p) for p in descendants(worker.pid)]
    # Its executors die by SIGKILL too (PDEATHSIG): their lane sockets are
    # the next worker's on this host to sweep, not a leak of this test.
    procs.killed += [c.pid for c in children]
    worker.kill()
    worker.wait(10)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive


def test_garbage_does_not_stop_the_master(cluster):
    port = cluster(1)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    apply_client(sock, client_keys(cluster_dir()))  # an authenticated peer sending garbage
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        for frames in ([b"junk"], [MAGIC + b"S{bad"], [MAGIC + b"?[]"], [b"CW\x07", b"H", b"{}"],
                       [MAGIC + b'R{"results": [[1, "ok", null, 0]]}', b"x"]):
            sock.send_multipart(frames)
        wait_for(lambda: query_status("127.0.0.1", port)["counts"]["malformed"] >= 4, what="drops")
    finally:
        sock.close()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(os.urandom(4096))
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert list(ex.map(jobs.square, range(10))) == [i * i for i in range(10)]


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["-m", "cw.worker", "--procs", "zero"], {}, "neither a number nor 'auto'"),
        (["-m", "cw.worker", "--procs", "0"], {}, "not at least 1"),
        (["-m", "cw.master", "--port", "99999"], {}, "99999"),
        (["-m", "cw.master", "--log-level", "loud"], {}, "loud"),
        (["-m", "cw.cli", "local", "start", "-n", "-1"], {}, "-1"),
        (["mp.py", "explode"], {}, "explode"),
        (["-m", "cw.cli", "local", "start", "--cluster", "../etc"], {}, "invalid cluster name"),
        (["-m", "cw.worker"], {"CW_PORT": "http"}, "'http'"),
    ],
)
def test_bad_command_line_values_are_one_line_errors(cw_home, args, env, message):
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=60)
    assert done.returncode in (1, 2)
    assert message in done.stderr and "Traceback" not in done.stderr


def test_worker_started_before_its_master_registers_when_it_comes(procs, cw_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs.worker(port)
    procs.spawn("-m", "cw.master", "--host", "127.0.0.1", "--port", str(port))
    wait_for(lambda: (cw_home / "default" / "master.json").exists(), what="master.json")
    wait_workers(port, 1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(jobs.square, 8).result(30) == 64
