"""ClusterExecutor and ClientThread against real master and worker processes."""
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, wait

import jobs
import pytest
from conftest import wait_for

from cw import RemoteException, UnpicklableError
from cw.client import ClientThread, ClusterExecutor
from cw.errors import MasterUnavailableError
from cw.launch import query_status


def test_submit_and_map_return_every_result(cluster):
    port = cluster(2)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        futs = [ex.submit(jobs.add, i, b=1) for i in range(200)]
        assert [f.result(timeout=60) for f in futs] == [i + 1 for i in range(200)]
        assert list(ex.map(jobs.square, range(100))) == [i * i for i in range(100)]
        assert list(ex.map(jobs.add, range(50), range(50), chunksize=7)) == [2 * i for i in range(50)]


def test_map_is_lazy_and_bounded(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10, max_pending=5) as ex:
        taken = []

        def source():
            for i in range(1000):
                taken.append(i)
                yield i

        results = ex.map(jobs.square, source())
        assert len(taken) == 5  # only the first window was submitted
        assert next(results) == 0
        assert len(taken) <= 6
        assert sum(results) == sum(i * i for i in range(1, 1000))


def test_closures_lambdas_and_main_functions_travel(cluster):
    port = cluster(1)
    offset = 10

    def local(x):
        return x + offset

    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(local, 1).result(30) == 11
        assert ex.submit(lambda: offset * 2).result(30) == 20


def test_job_runs_in_client_cwd_with_client_sys_path(cluster, tmp_path, monkeypatch):
    port = cluster(1)
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    (workdir / "only_here.py").write_text("VALUE = 42\n")
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        cwd, path = ex.submit(jobs.where).result(30)
        assert cwd == str(workdir)
        assert path[: len(sys.path)] == sys.path
        assert ex.submit(lambda: __import__("only_here").VALUE).result(30) == 42
        # ...and the worker put its own cwd and path back afterwards.
        monkeypatch.chdir(tmp_path)
        cwd2, path2 = ex.submit(jobs.where).result(30)
        assert cwd2 == str(tmp_path)


def test_remote_exception_has_its_type_and_remote_traceback(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        with pytest.raises(jobs.CustomError) as info:
            ex.submit(jobs.fail, 5).result(30)
        assert info.value.code == 5
        cause = info.value.__cause__
        assert "in fail" in str(cause) and "jobs.py" in str(cause)
        with pytest.raises(RemoteException, match="an exception the client cannot rebuild") as info2:
            ex.submit(jobs.fail_unpicklable).result(30)
        assert "Traceback" in str(info2.value)
        assert ex.submit(jobs.square, 3).result(30) == 9  # the worker keeps serving


def test_unpicklable_argument_and_result(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        with pytest.raises(UnpicklableError, match="argument 0"):
            ex.submit(jobs.square, threading.Lock())
        with pytest.raises(TypeError, match="lock"):
            ex.submit(jobs.return_lock).result(30)
        assert ex.submit(jobs.square, 4).result(30) == 16


def test_worker_that_joins_late_picks_up_queued_jobs(procs):
    _, port = procs.master()
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        futs = [ex.submit(jobs.square, i) for i in range(20)]
        wait_for(lambda: query_status("127.0.0.1", port)["queued"] == 20, what="20 queued jobs")
        assert not any(f.done() for f in futs)
        procs.worker(port)
        assert [f.result(60) for f in futs] == [i * i for i in range(20)]


def test_two_clients_share_one_master(cluster):
    port = cluster(2)
    out = {}

    def run(name, base):
        with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
            out[name] = list(ex.map(jobs.add, range(base, base + 100)))

    threads = [threading.Thread(target=run, args=(n, b)) for n, b in (("a", 0), ("b", 1000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {"a": list(range(100)), "b": list(range(1000, 1100))}


def test_cancel_of_a_queued_future_removes_it_from_the_master(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        blocker = ex.submit(jobs.sleep, 1.0, "done")
        queued = [ex.submit(jobs.square, i) for i in range(5)]
        wait_for(lambda: blocker.running(), what="the blocker to start")
        assert queued[2].cancel() is True
        assert queued[2].cancelled()
        with pytest.raises(CancelledError):
            queued[2].result()
        assert blocker.cancel() is False  # running: concurrent.futures semantics
        wait(queued, timeout=30)
        assert [f.result() for i, f in enumerate(queued) if i != 2] == [0, 1, 9, 16]
        assert blocker.result(30) == "done"
        snap = query_status("127.0.0.1", port)
        assert snap["counts"]["submitted"] == 6 and snap["queued"] == 0
        assert snap["executors"][0]["done"] == 5  # the cancelled job never ran


def test_a_prefetched_job_is_not_running_and_cancels_without_running(cluster, tmp_path, monkeypatch):
    """One executor holds a job behind the one it runs (--prefetch 1): that
    job has not begun, so it is not running, and cancelling it keeps it
    from ever running."""
    monkeypatch.setenv("CW_LANES", "0")  # after the first job, the next would take a lane
    port = cluster(1)
    started, release, marker = tmp_path / "started", tmp_path / "release", tmp_path / "ran"
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(jobs.square, 3).result(30) == 9  # its jobs are short: the master prefetches them
        blocker = ex.submit(jobs.log_pid_and_wait, str(started), str(release))
        behind = ex.submit(jobs.touch, str(marker))
        wait_for(lambda: blocker.running(), what="the blocker to start")
        wait_for(lambda: query_status("127.0.0.1", port)["executors"][0]["prefetched"] == 1,
                 what="the second job prefetched by the busy executor")
        # The master used to say STARTED 5 ms after sending a job, prefetched or not.
        time.sleep(0.2)
        client = query_status("127.0.0.1", port)["clients"][0]
        assert client["running"] == 1 and client["prefetched"] == 1
        assert not behind.running()
        assert behind.cancel() is True and behind.cancelled()
        release.touch()
        assert blocker.result(30) > 0
        assert ex.submit(jobs.square, 4).result(30) == 16  # the executor went past where it was
    assert not marker.exists()  # it never ran
    assert query_status("127.0.0.1", port)["executors"][0]["done"] == 3


def test_unreachable_master_raises_within_its_timeout(cw_home):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    start = time.monotonic()
    with pytest.raises(MasterUnavailableError, match=f"127.0.0.1:{port}"):
        ClusterExecutor("127.0.0.1", port, connect_timeout=1.0)
    assert time.monotonic() - start < 10
    with pytest.raises(MasterUnavailableError, match=f"127.0.0.1:{port}"):
        ClientThread(print, "127.0.0.1", port, connect_timeout=0.5).start()


def test_client_started_before_its_master_waits_for_it(procs, cw_home):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = {}

    def client():
        with ClusterExecutor("127.0.0.1", port, connect_timeout=30) as ex:
            result["v"] = ex.submit(jobs.square, 7).result(60)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.5)  # the point of the test: the client really starts first
    procs.spawn("-m", "cw.master", "--host", "127.0.0.1", "--port", str(port))
    procs.worker(port)
    t.join(60)
    assert result == {"v": 49}


def test_client_finds_master_through_cluster_directory(cluster):
    cluster(1)
    with ClusterExecutor(connect_timeout=10) as ex:  # no host, no port
        assert ex.submit(jobs.square, 5).result(30) == 25


def test_client_thread_callbacks_and_any_hashable_jobid(cluster):
    port = cluster(2)
    results = {}
    with ClientThread(lambda jid, r: results.__setitem__(jid, r), "127.0.0.1", port) as ct:
        for i in range(20):
            ct.submit(("job", i), jobs.square, i)
    assert results == {("job", i): i * i for i in range(20)}


def test_client_thread_wait_raises_remote_exception_with_traceback(cluster):
    port = cluster(1)
    ct = ClientThread(lambda jid, r: None, "127.0.0.1", port)
    ct.start()
    try:
        ct.submit("bad", jobs.fail, 3)
        with pytest.raises(RemoteException, match="CustomError: custom failure 3") as info:
            ct.wait()
        assert "Traceback" in str(info.value) and info.value.jobid == "bad"
    finally:
        ct.stop()


def test_client_thread_submit_from_callback_does_not_deadlock(cluster):
    port = cluster(1)
    seen = []

    def callback(jid, result):
        seen.append(jid)
        if jid < 5:
            ct.submit(jid + 1, jobs.square, jid + 1)

    ct = ClientThread(callback, "127.0.0.1", port, max_pending=1)
    with ct:
        ct.submit(0, jobs.square, 0)
        wait_for(lambda: len(seen) == 6, what="chained jobs")
    assert seen == [0, 1, 2, 3, 4, 5]


def test_shutdown_cancel_futures(cluster):
    port = cluster(1)
    ex = ClusterExecutor("127.0.0.1", port, connect_timeout=10)
    first = ex.submit(jobs.sleep, 0.5, 1)
    rest = [ex.submit(jobs.square, i) for i in range(10)]
    wait_for(first.running, what="first job")
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == 1
    # One job may already sit prefetched on the executor (running); the rest are cancelled.
    assert sum(f.cancelled() for f in rest) >= 9
    assert all(f.result() == i * i for i, f in enumerate(rest) if not f.cancelled())
    with pytest.raises(RuntimeError):
        ex.submit(jobs.square, 1)


def test_future_info_names_the_worker_and_how_long_the_job_queued_and_ran(cluster):
    port = cluster(1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        queued = ex.submit(jobs.sleep, 0.3, "a")
        behind = ex.submit(jobs.sleep, 0.01, "b")  # waits for the first on the only executor
        assert queued.info.ran is None
        assert behind.result(30) == "b" and queued.result(30) == "a"
        snap = query_status("127.0.0.1", port)
        executor = snap["executors"][0]
        assert queued.info.worker == behind.info.worker == f"{executor['host']}:{executor['pid']}"
        assert 0.3 <= queued.info.ran < 5 and 0.01 <= behind.info.ran < 0.3
        assert 0 <= queued.info.queued < 5 and 0 <= behind.info.queued < 5
        quick = ex.submit(jobs.square, 3)  # over before the master says STARTED: its result names the worker
        assert quick.result(30) == 9 and quick.info.worker == queued.info.worker
        assert 0 <= quick.info.queued < 5 and 0 <= quick.info.ran < 1


SCRIPT = '''\
import sys
from cw.client import ClusterExecutor

def compute(x):
    y = x + 1
    raise ValueError(f"bad value {y}")

if __name__ == "__main__":
    with ClusterExecutor("127.0.0.1", int(sys.argv[1]), connect_timeout=10) as ex:
        try:
            ex.submit(compute, 1).result(30)
        except ValueError as e:
            print(e.error)
'''


def test_a_remote_traceback_of_a_function_of_the_script_names_its_file_and_line(cluster, tmp_path):
    port = cluster(1)
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(port)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f'File "{script}", line 6, in compute' in done.stdout
    assert 'raise ValueError(f"bad value {y}")' in done.stdout and "<dynamic-code>" not in done.stdout


def test_a_frame_the_worker_could_not_read_gets_its_source_line_on_the_client(tmp_path):
    from cw.joberrors import _with_source

    source = tmp_path / "mine.py"
    source.write_text("a = 1\nraise KeyError('x')\n")
    text = f'Traceback (most recent call last):\n  File "{source}", line 2, in <module>\nKeyError: \'x\'\n'
    assert "line 2, in <module>\n    raise KeyError('x')\nKeyError" in _with_source(text)
    assert _with_source(text.replace(str(source), "/nowhere.py")) == text.replace(str(source), "/nowhere.py")
