"""Lanes (cw.lanes) with real processes: a sequential caller's jobs go
straight to an executor of its host, and none is lost or delivered twice
when that executor dies, drains or is taken back."""
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import CancelledError

import jobs
import psutil
import pytest
from conftest import ROOT, stop_gracefully, wait_for, wait_workers

from cw import shm, shmdir
from cw.client import ClientThread, ClusterExecutor
from cw.launch import query_status

FAST = ("--heartbeat", "0.2", "--liveness", "5")
CLIENT_FAST = {"heartbeat": 0.2, "liveness": 5, "connect_timeout": 20}

pytestmark = pytest.mark.skipif(shm.host_key() is None, reason="lanes need /dev/shm")


def status(port):
    return query_status("127.0.0.1", port)


def lent(port):
    """The executor whose lane is lent now (its status entry), or None."""
    return next((e for e in status(port)["executors"] if e["lent"]), None)


def take_a_lane(ex, port):
    """Sequential jobs until some run down a lane; the lane's executor's pid."""
    for i in range(500):
        assert ex.submit(jobs.square, i).result(30) == i * i
        if status(port)["counts"]["laned"] and lent(port):
            return lent(port)["pid"]
    raise AssertionError("no job ever took a lane")


def test_a_sequential_callers_jobs_skip_the_master(cluster):
    port = cluster(2, worker_args=FAST, master_args=FAST)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        assert [ex.submit(jobs.square, i).result(30) for i in range(200)] == [i * i for i in range(200)]
        # The master dispatched a few before the lane was up; the rest it only counted.
        wait_for(lambda: status(port)["counts"]["done"] == 200, what="the lane's counts")
        counts = status(port)["counts"]
        assert counts["submitted"] == 200 and counts["laned"] >= 150 and counts["lost"] == 0
        assert lent(port) is not None


def test_executor_killed_under_a_lane_job_loses_nothing(cluster, tmp_path):
    # No spare: the job sent again, and the next, are the replacement's.
    port = cluster(1, worker_args=(*FAST, "--no-express"), master_args=FAST)
    ran, release = tmp_path / "ran", tmp_path / "release"
    got = []
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        victim = take_a_lane(ex, port)
        submitted = status(port)["counts"]["submitted"]
        # No retries: a death under a lane job must be charged to no job.
        fut = ex.submit(jobs.log_pid_and_wait, str(ran), str(release), retries=0)
        wait_for(lambda: ran.exists() and ran.read_text(), what="the job to start")
        assert ran.read_text().split() == [str(victim)]
        assert status(port)["counts"]["submitted"] == submitted  # the master holds it not
        fut.add_done_callback(lambda f: got.append(f.result()))
        psutil.Process(victim).send_signal(signal.SIGKILL)
        wait_for(lambda: len(ran.read_text().split()) == 2, what="the job to run again")
        release.touch()
        again = fut.result(30)
        assert again != victim and ran.read_text().split() == [str(victim), str(again)]
        assert ex.submit(jobs.pid).result(30) == again  # the replacement takes the next
    assert got == [again]  # delivered once
    assert status(port)["counts"]["lost"] == 0


@pytest.mark.parametrize("frozen", ["worker", "executor"])
def test_a_frozen_lane_executors_job_moves_on_within_the_heartbeat_window(cluster, procs, tmp_path, frozen):
    """A hung node (the whole worker stopped) or an executor stopped alone
    (its supervisor still beats, and says it is stopped)."""
    port = cluster(0, master_args=FAST)
    workers = [procs.worker(port, *FAST) for _ in range(2)]
    wait_workers(port, 2)
    log, release = tmp_path / "log", tmp_path / "release"
    got = []
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        victim = take_a_lane(ex, port)
        owner = next(w for w in workers if victim in {c.pid for c in psutil.Process(w.pid).children()})
        sent = next(ex._ids) - 1  # the jobs submitted so far (ids count from 1)
        wait_for(lambda: status(port)["counts"]["done"] == sent, what="the lane's counts")
        fut = ex.submit(jobs.log_start_and_end, str(log), str(release))
        fut.add_done_callback(lambda f: got.append(f.result()))
        wait_for(lambda: log.exists() and log.read_text(), what="the job to start")
        assert log.read_text().split() == ["start", str(victim)]  # down the lane
        frozen = procs.kill_tree(owner.pid if frozen == "worker" else victim, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            wait_for(lambda: len(log.read_text().split()) == 4, what="the job to start elsewhere")
            moved_after = time.monotonic() - frozen_at
            release.touch()
            other = fut.result(10)
        finally:
            for p in frozen:
                p.send_signal(signal.SIGCONT)
        window = 0.2 * 5  # the client's (and master's) heartbeat * liveness
        assert moved_after < window + 2.0, f"the job moved on after {moved_after:.1f} s"
        assert other != victim and log.read_text().split()[2:4] == ["start", str(other)]
        # Thawed, the frozen executor ends the job; its client gave up on the lane: the late
        # result reaches no one, and no count takes it for a job done.
        wait_for(lambda: f"end {victim}" in log.read_text(), what="the thawed executor to end the job")
        assert ex.submit(jobs.square, 4).result(30) == 16  # a turn of the client after that
        sent = next(ex._ids) - 2  # skipped one above
        wait_for(lambda: status(port)["counts"]["done"] >= sent, what="the counts to settle")
        counts = status(port)["counts"]
        assert (counts["submitted"], counts["done"], counts["lost"]) == (sent, sent, 0)  # each job once
    assert got == [other]  # delivered once


def test_jobs_queueing_up_take_the_lane_back(cluster):
    port = cluster(2, worker_args=FAST, master_args=FAST)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        take_a_lane(ex, port)
        assert list(ex.map(jobs.square, range(2000))) == [i * i for i in range(2000)]
        wait_for(lambda: lent(port) is None, what="the lane to be taken back")
        wait_for(lambda: not ex._core.lanes, what="the client to close the lane")
        busy = {e["pid"] for e in status(port)["executors"] if e["done"]}
        assert len(busy) == 2  # the burst went to both executors, through the master


def test_a_draining_worker_gives_its_lane_back(cluster, procs):
    port = cluster(0, master_args=FAST)
    workers = [procs.worker(port, *FAST) for _ in range(2)]
    wait_workers(port, 2)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        pid = take_a_lane(ex, port)
        owner = next(w for w in workers if pid in {c.pid for c in psutil.Process(w.pid).children()})
        assert stop_gracefully(owner) == 0
        pids = {ex.submit(jobs.pid).result(30) for _ in range(100)}
        assert pid not in pids and len(pids) == 1
        survivor = pids.pop()
        wait_for(lambda: (lent(port) or {}).get("pid") == survivor, what="the other executor's lane")


def test_force_cancel_of_a_lane_job_kills_its_executor(cluster, tmp_path):
    port = cluster(1, worker_args=FAST, master_args=FAST)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        victim = take_a_lane(ex, port)
        submitted = status(port)["counts"]["submitted"]
        fut = ex.submit(jobs.log_pid_and_wait, str(tmp_path / "ran"), str(tmp_path / "never"))
        wait_for(lambda: (tmp_path / "ran").exists(), what="the job to start")
        assert status(port)["counts"]["submitted"] == submitted  # a lane job
        # cw status shows it as its supervisor sees it, one heartbeat late at most
        snap = wait_for(lambda: (lambda s: s if s["totals"]["running"] == 1 else None)(status(port)),
                        what="the lane's job in the status")
        assert [(e["pid"], e["job"], e["lane"]) for e in snap["executors"]] == [(victim, "lane", True)]
        assert [(c["running"], c["queued"]) for c in snap["clients"]] == [(1, 0)]
        assert [(w["state"], w["job"]) for w in snap["workers"]] == [("busy", "lane")]
        assert fut.cancel() is False and ex.cancel(fut, force=True) is True
        with pytest.raises(CancelledError):
            fut.result(5)
        wait_for(lambda: not psutil.pid_exists(victim), what="the executor to be killed")
        assert ex.submit(jobs.pid).result(30) != victim
        assert status(port)["counts"]["killed"] == 1
    assert (tmp_path / "ran").read_text().split() == [str(victim)]  # not run again


def test_callbacks_of_lane_jobs_arrive_once(cluster):
    port = cluster(1, worker_args=FAST, master_args=FAST)
    got = {}
    with ClientThread(lambda jid, value: got.setdefault(jid, []).append(value), "127.0.0.1", port,
                      **CLIENT_FAST) as c:
        for i in range(100):
            c.submit(i, jobs.square, i)
            wait_for(lambda i=i: i in got, what=f"job {i}")
    assert got == {i: [i * i] for i in range(100)}
    wait_for(lambda: status(port)["counts"]["laned"] > 0, what="the lane's counts")


def test_CW_LANES_0_keeps_every_job_on_the_master(cluster, monkeypatch):
    monkeypatch.setenv("CW_LANES", "0")  # the workers and this client inherit it
    port = cluster(1, worker_args=FAST, master_args=FAST)
    with ClusterExecutor("127.0.0.1", port, **CLIENT_FAST) as ex:
        assert [ex.submit(jobs.square, i).result(30) for i in range(50)] == [i * i for i in range(50)]
        counts = status(port)["counts"]
        assert (counts["submitted"], counts["done"], counts["laned"]) == (50, 50, 0)
        assert lent(port) is None and not ex._core.lanes


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user's")
def test_status_says_why_lanes_are_off(procs, cw_home):
    """Had another user taken the private directory's name first, lanes (and
    shared memory) are off on that host, and `cw status` says why."""
    root, _ = shmdir.directory()  # this test's CW_HOME: the workers' too
    assert root is not None
    os.chown(root, 65534, 65534)
    try:
        _, port = procs.master(*FAST)
        procs.worker(port, *FAST)
        wait_for(lambda: status(port)["lanes_off"], what="the executor's READY")
        why = f"no shared memory: /dev/shm/cw-{os.getuid()}-<secret> is owned by uid 65534, not {os.getuid()}"
        assert status(port)["lanes_off"] == {socket.gethostname(): why}
        out = subprocess.run([sys.executable, "-m", "cw.cli", "status"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        said = out.stdout.split("lanes off on ", 1)[1].split("\n\n")[0]
        text = " ".join(line.strip() for line in said.splitlines())
        assert text == f"{socket.gethostname()}: {why}"
        assert root.name not in out.stdout  # the secret name is never shown
    finally:
        os.chown(root, os.getuid(), os.getgid())
