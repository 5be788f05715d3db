"""``cw.worker --master-timeout``: a worker does not outlive its master."""
import time

import psutil
from conftest import descendants, wait_for, wait_workers


def test_worker_exits_when_its_master_is_gone(procs):
    master, port = procs.master()
    worker = procs.worker(port, "--master-timeout", "2", "--heartbeat", "0.2", procs=2)
    wait_workers(port, 1, executors=2, spares=1)
    executors = descendants(worker.pid)
    assert len(executors) == 3  # and the express spare
    master.kill()
    master.wait(10)
    started = time.monotonic()
    assert worker.wait(timeout=20) == 3
    assert 1.5 < time.monotonic() - started < 15
    wait_for(lambda: not any(psutil.pid_exists(p) for p in executors), what="executors gone")


def test_worker_gives_up_on_a_master_it_never_reached(procs):
    """A head that vanished before the worker first heard from it leaves no orphan either."""
    worker = procs.worker(1, "--master-timeout", "1", "--heartbeat", "0.2")
    assert worker.wait(timeout=20) == 3


def test_without_master_timeout_a_worker_waits_for_its_master(procs):
    worker = procs.worker(1, "--heartbeat", "0.2")
    time.sleep(2)
    assert worker.poll() is None
    worker.terminate()
    assert worker.wait(20) == 0
