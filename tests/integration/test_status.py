"""`cw status`, `cw logs` and progress output, checked against what the test did."""
import json
import os
import queue
import re
import subprocess
import sys
import threading

import jobs
from conftest import ROOT, wait_for

from cw.client import ClusterExecutor


def cw(*args, timeout=30, env=None):
    return subprocess.run([sys.executable, "-m", "cw.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def status():
    out = cw("status", "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_status_json_matches_what_ran(cluster, tmp_path):
    cluster(2)
    release = tmp_path / "release"
    with ClusterExecutor(connect_timeout=10) as ex:
        try:
            check_a_run(ex, release)
        finally:
            release.touch()  # whatever failed, no job stays held
    snap = wait_for(lambda: (lambda s: s if s["totals"]["done"] == 12 else None)(status()), what="12 done")
    t = snap["totals"]
    assert (t["running"], t["queued"], t["failed"], t["clients"]) == (0, 0, 2, 0)
    assert {w["state"] for w in snap["workers"]} == {"idle"}


def check_a_run(ex, release):
    """Jobs done, failed, running and waiting, each read back from `cw status --json`."""
    # 1. five jobs that succeed and two that fail
    futs = [ex.submit(jobs.square, i) for i in range(5)] + [ex.submit(jobs.fail, 1) for _ in range(2)]
    assert sum(f.exception(30) is not None for f in futs) == 2
    snap = wait_for(lambda: (lambda s: s if s["totals"]["done"] == 7 else None)(status()),
                    what="7 jobs done in the snapshot")
    t = snap["totals"]
    assert (t["workers"], t["executors"], t["done"], t["failed"], t["running"]) == (2, 2, 7, 2, 0)
    assert sum(w["done"] for w in snap["workers"]) == 7
    assert sum(w["failed"] for w in snap["workers"]) == 2
    assert snap["throughput"]["last_minute"] == 7 and snap["throughput"]["rate"] > 0
    [client] = snap["clients"]
    assert (client["pid"], client["done"], client["queued"], client["running"]) == (os.getpid(), 7, 0, 0)
    # 2. five jobs held running: two run, the others wait, prefetched by an executor or queued
    held = [ex.submit(jobs.wait_for_file, str(release), i) for i in range(5)]
    snap = wait_for(lambda: (lambda s: s if s["totals"]["running"] == 2
                             and s["totals"]["queued"] + s["totals"]["prefetched"] == 3 else None)(status()),
                    what="two running jobs and three waiting")
    assert {w["state"] for w in snap["workers"]} == {"busy"}
    assert all(w["job"] is not None and w["age"] >= 0 for w in snap["workers"])
    [client] = snap["clients"]
    totals = snap["totals"]
    assert (client["queued"], client["prefetched"]) == (totals["queued"], totals["prefetched"])
    assert client["running"] == 2 and client["running"] + client["prefetched"] + client["queued"] == 5
    # the supervisors' heartbeats carry their executors' CPU and memory
    snap = wait_for(lambda: (lambda s: s if all(w["rss"] for w in s["workers"]) else None)(status()),
                    what="worker RSS in the snapshot")
    assert all(w["rss"] > 1 << 20 and 0 <= w["cpu"] < 1000 for w in snap["workers"])
    table = cw("status")
    assert table.returncode == 0 and all(len(line) <= 80 for line in table.stdout.splitlines())
    assert table.stdout.count(" busy ") == 2 and "2 running" in table.stdout
    # 3. released: everything finishes
    release.touch()
    assert [f.result(30) for f in held] == list(range(5))


def test_unreachable_master_is_one_line_naming_the_address(cw_home):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = cw("status", "--timeout", "1", env={**os.environ, "CW_MASTER_ADDRESS": "127.0.0.1",
                                                "CW_PORT": str(port)})
    assert out.returncode == 1 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in out.stderr


def follow_output(procs, *args):
    """Start ``cw ARGS``; return it and a queue of its output lines."""
    proc = subprocess.Popen([sys.executable, "-m", "cw.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    procs.popens.append(proc)  # never outlives the test
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def wait_line(lines, pattern, what):
    seen = []

    def check():
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            return False
        return pattern in seen[-1]

    wait_for(check, what=what)
    return seen


def end(proc):
    proc.kill()
    proc.wait(10)
    proc.stdout.close()


def test_watch_redraws(cluster, procs):
    cluster(1)
    proc, lines = follow_output(procs, "status", "--watch", "--interval", "0.2")
    try:
        seen = wait_line(lines, "WORKER", "a first frame")
        seen += wait_line(lines, "WORKER", "a second frame")  # one frame after another: no terminal
        assert sum(line.startswith("master 127.0.0.1:") for line in seen) == 2
        assert any(" idle " in line for line in seen)
    finally:
        end(proc)


def test_job_prints_go_to_the_worker_log_and_cw_logs_shows_them(cluster, procs, cw_home):
    cluster(1)
    logs = cw_home / "default" / "logs"
    [worker_log] = wait_for(lambda: list(logs.glob("worker-*.log")), what="the worker's log file")
    pid = worker_log.stem.rsplit("-", 1)[1]
    follower, lines = follow_output(procs, "logs", "--follow", pid)
    with ClusterExecutor(connect_timeout=10) as ex:
        assert ex.submit(jobs.shout, "marker-1").result(30) == "marker-1"
    tagged = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO cw\.job\[\d+\]: "
                        r"job \d+ stdout: marker-1$")
    wait_for(lambda: any(tagged.match(line) for line in worker_log.read_text().splitlines()),
             what="the job's print in the worker's log")
    assert re.search(r"job \d+ stderr: marker-1 on stderr", worker_log.read_text())
    shown = cw("logs", pid)
    assert shown.returncode == 0 and "stdout: marker-1" in shown.stdout
    master = cw("logs", "master")
    assert "master listening" in master.stdout and "marker-1" not in master.stdout
    try:
        wait_line(lines, "stdout: marker-1", "cw logs --follow printing the new line")
    finally:
        end(follower)


CLIENT = """
import sys
from cw.client import ClientThread, ClusterExecutor
import jobs
ex = ClusterExecutor(connect_timeout=10)
assert list(ex.map(jobs.square, range(50), progress=True)) == [i * i for i in range(50)]
print("--map done--", file=sys.stderr, flush=True)
assert list(ex.map(jobs.square, range(10))) == [i * i for i in range(10)]
print("--quiet done--", file=sys.stderr, flush=True)
ex.shutdown()
with ClientThread(lambda jobid, result: None, connect_timeout=10, progress=True) as ct:
    for i in range(20):
        ct.submit(i, jobs.square, i)
"""


def test_progress_on_a_non_tty_stderr(cluster):
    cluster(1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    out = subprocess.run([sys.executable, "-c", CLIENT], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    progress, quiet, thread = re.split(r"--map done--\n|--quiet done--\n", out.stderr)
    assert re.fullmatch(r"(cw: \d+/50 \(\d+%\) done, [\d.]+/s, ETA \S+\n)*"
                        r"cw: 50/50 done in \d+:\d\d \([\d.]+/s\)\n", progress), progress
    assert quiet == ""  # without progress=True, nothing
    assert re.fullmatch(r"(cw: .*\n)*cw: 20/20 done in \d+:\d\d \([\d.]+/s\)\n", thread), thread
    assert "\r" not in out.stderr and "\x1b" not in out.stderr
