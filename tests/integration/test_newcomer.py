"""A newcomer's first hour: small surprises, each with the answer a user
expects (issue 24's list). Real processes, local clusters."""
import subprocess
import sys

import jobs
from conftest import ROOT, wait_for

from cw.client import ClusterExecutor
from cw.launch import query_status


def cw(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "cw.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_status_of_a_cluster_nobody_started_says_so_and_makes_nothing(cw_home):
    (cw_home / "default").mkdir(parents=True, mode=0o700)
    (cw_home / "default" / "keys").mkdir(mode=0o700)
    done = cw("status", "--cluster", "nosuch")
    assert done.returncode == 1 and "no cluster 'nosuch' here" in done.stderr, done.stderr
    assert "clusters here: default" in done.stderr and "Traceback" not in done.stderr
    assert not (cw_home / "nosuch").exists()


def test_a_bad_log_level_is_named_before_anything_starts(cw_home):
    done = subprocess.run([sys.executable, "mp.py", "-n", "1", "start"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "CW_LOG_LEVEL": "LOUD"})
    assert done.returncode == 1 and "CW_LOG_LEVEL='LOUD': expected one of debug" in done.stderr
    assert not (cw_home / "default" / "master.json").exists()


def test_cancelled_jobs_are_not_counted_done(cluster, tmp_path):
    port = cluster(1)
    release = tmp_path / "release"
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        blocker = ex.submit(jobs.wait_for_file, str(release), "ran")
        queued = [ex.submit(jobs.square, i) for i in range(6)]
        wait_for(lambda: blocker.running(), what="the blocker to start")
        cancelled = sum(f.cancel() for f in queued)
        assert cancelled >= 5  # one may be prefetched by the executor: cancelled there
        release.touch()
        assert blocker.result(30) == "ran"
    counts = wait_for(lambda: (lambda c: c if c["done"] + c["cancelled"] == 7 else None)(
        query_status("127.0.0.1", port)["counts"]), what="every job answered")
    assert counts["done"] == 7 - cancelled and counts["cancelled"] == cancelled
    snap = query_status("127.0.0.1", port)
    assert snap["totals"]["done"] == 7 - cancelled and snap["executors"][0]["done"] == 7 - cancelled


def test_the_timeline_benchmark_runs_as_documented(cw_home):
    """It crashed with StatisticsError once lanes took sequential jobs past the master."""
    done = subprocess.run([sys.executable, "benchmarks/timeline.py", "--trips", "30"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "round trips; the client measured a median of" in done.stdout
    assert "master sends TASK -> executor has it" in done.stdout


def test_cw_logs_finds_a_worker_by_the_pid_status_shows_and_tags_jobs_by_their_ids(cw_home):
    import json

    from cw.client import ClientThread, RemoteException

    up = subprocess.run([sys.executable, "mp.py", "-n", "2", "start"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    try:
        status = cw("status", "--json")
        pids = [w["pid"] for w in json.loads(status.stdout)["workers"]]
        assert len(pids) == 2
        ct = ClientThread(lambda jobid, result: None, connect_timeout=10)
        ct.start()
        ct.submit("greeting", print, "hello from the job")
        ct.submit("broken", int, "not a number")
        try:
            ct.wait()
        except RemoteException:
            pass
        ct.wait()
        ct.stop()
        everything = wait_for(lambda: (lambda out: out if "ValueError: invalid literal" in out else None)(
            cw("logs").stdout), what="the failed job's traceback in the logs")
        assert "job greeting stdout: hello from the job" in everything  # the client's id, not cw's
        assert "job broken failed" in everything
        for pid, other in (pids, pids[::-1]):
            mine = cw("logs", str(pid))
            assert mine.returncode == 0 and f"[{pid}]" in mine.stdout and f"[{other}]" not in mine.stdout
    finally:
        subprocess.run([sys.executable, "mp.py", "stop"], cwd=ROOT, capture_output=True, timeout=120)


def test_mp_py_start_prints_the_dashboard_address(cw_home):
    import os

    up = subprocess.run([sys.executable, "mp.py", "-n", "1", "start"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, "CW_HTTP_PORT": "0"})
    try:
        assert up.returncode == 0, up.stderr
        assert "; dashboard http://127.0.0.1:" in up.stdout
    finally:
        subprocess.run([sys.executable, "mp.py", "stop"], cwd=ROOT, capture_output=True, timeout=120)


def test_jobs_of_a_client_that_left_are_not_counted_done(cluster, tmp_path):
    """A client that submits and dies: its queued, prefetched and running
    jobs are dropped, and none of them shows as done."""
    port = cluster(1)
    release = tmp_path / "release"
    program = (
        "import os, sys, time\n"
        "import jobs\n"
        "from cw.client import ClusterExecutor\n"
        f"ex = ClusterExecutor('127.0.0.1', {port}, connect_timeout=10)\n"
        f"blocker = ex.submit(jobs.wait_for_file, {str(release)!r}, 'ran')\n"
        "rest = [ex.submit(jobs.square, i) for i in range(5)]\n"
        "while not blocker.running():\n"
        "    time.sleep(0.01)\n"
        "os._exit(0)  # gone without a word\n"
    )
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT / "tests", capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: query_status("127.0.0.1", port)["totals"]["clients"] == 0, timeout=60,
             what="the master to drop the client")
    release.touch()
    snap = wait_for(lambda: (lambda s: s if s["workers"] and s["workers"][0]["state"] == "idle"
                             and s["totals"]["executors"] == 1 else None)(query_status("127.0.0.1", port)),
                    timeout=60, what="the worker idle again")
    assert snap["counts"]["done"] == 0 and snap["totals"]["done"] == 0
    assert snap["executors"][0]["done"] == 0
