"""Big arrays through shared memory: past the master, and back inline when
an executor cannot map the client's files."""
import logging
import os
import shutil
import subprocess
import sys

import jobs
import numpy
import pytest
from conftest import ROOT, wait_for, wait_workers

from cw import shm
from cw.client import ClientThread, ClusterExecutor
from cw.cluster import pid_alive
from cw.launch import query_status

MIB = 1 << 20


def our_files(spares=False):
    """This process's job files (with ``spares``: its spare files too)."""
    return [n for n in os.listdir(shm.root()) if n.startswith(f"cw-{shm._cached[1]}-{os.getpid()}-")
            and (spares or "-s-" not in n)]


def test_big_arrays_skip_the_master_on_one_host(cluster):
    # A master that refuses any message over 1 MiB: 16 MiB arrays pass both
    # ways only if their bytes never cross it.
    port = cluster(1, master_args=("--max-message-size", str(MIB)))
    data = numpy.arange(2 * MIB, dtype=numpy.int64)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex._core.shared
        back = ex.submit(jobs.scale_in_place, data, 3).result(30)
        assert back.flags.writeable and numpy.array_equal(back, numpy.arange(2 * MIB) * 3)
        assert data[1] == 1  # the job changed its own copy only
        wait_for(lambda: our_files() == [], what="the argument's file to go")
        futs = [ex.submit(numpy.sum, data) for _ in range(5)]
        assert [f.result(30) for f in futs] == [data.sum()] * 5
        assert ex.submit(jobs.shm_files).result(30) == []  # no job's file left on the worker's side
        assert len(ex.submit(jobs.shm_files, True).result(30)) <= 2 * shm.SPARE_FILES  # spares: few
        del back
        assert our_files(spares=True)  # the result's file, a spare now

    got = {}
    with ClientThread(lambda jid, value: got.update({jid: value.sum()}), "127.0.0.1", port,
                      connect_timeout=10) as client:
        client.submit("a", jobs.scale_in_place, data, 2)
    assert got == {"a": data.sum() * 2}
    assert our_files() == []
    shm.drop_spares()
    assert our_files(spares=True) == []


def test_cancelled_and_failed_jobs_leave_no_file(cluster):
    port = cluster(1)
    data = numpy.ones(2 * MIB, dtype=numpy.uint8)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        blocker = ex.submit(jobs.sleep, 1.0, "slept")
        wait_for(blocker.running, what="the first job to start")
        queued = ex.submit(len, data)
        assert len(our_files()) == 1
        assert queued.cancel()
        wait_for(lambda: our_files() == [], what="the cancelled job's file to go")
        with pytest.raises(TypeError):
            ex.submit(jobs.add, data, "text").result(30)
        wait_for(lambda: our_files() == [], what="the failed job's file to go")
        assert blocker.result(30) == "slept"


def test_a_job_requeued_after_its_executor_died_gets_a_fresh_file(cluster, tmp_path):
    port = cluster(1)
    data = numpy.arange(MIB, dtype=numpy.int64)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        # The dead executor claimed the first file: the rerun bounces, and
        # the client writes the data again, still through shared memory.
        assert ex.submit(jobs.sum_dying_once, data, str(tmp_path / "died")).result(60) == data.sum()
        assert ex._core.shared
        wait_for(lambda: our_files() == [], what="the job's files to go")
    # The file the dead executor claimed is named after it: the sweep takes it.
    shm.sweep(shm._cached[1])
    dead = [n for n in os.listdir(shm.root()) if n.startswith(f"cw-{shm._cached[1]}-")
            and not pid_alive(int(n.split("-")[2]))]
    assert dead == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private /dev/shm")
def test_an_executor_without_our_shared_memory_gets_the_data_inline(procs, caplog):
    """A worker with its own /dev/shm stands for one on another host."""
    _, port = procs.master()
    script = ('mount -t tmpfs -o size=64m cwshm /dev/shm && exec "$0" -m cw.worker 127.0.0.1 '
              f'--port {port} --procs 1')
    worker = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script, sys.executable], cwd=ROOT, stdin=subprocess.DEVNULL)
    procs.popens.append(worker)
    procs.observe()
    wait_workers(port, 1)
    data = numpy.arange(MIB, dtype=numpy.int64)
    with caplog.at_level(logging.INFO, logger="cw.client.jobs"):
        with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
            assert ex._core.shared
            back = ex.submit(jobs.scale_in_place, data, 2).result(30)
            assert numpy.array_equal(back, data * 2) and back.flags.writeable
            assert not ex._core.shared  # learnt: later jobs carry their bytes
            assert ex.submit(numpy.sum, data).result(30) == data.sum()
            assert ex.submit(jobs.shm_files).result(30) == []  # its /dev/shm: no result files
            assert our_files() == []
    assert "cannot reach this client's shared memory" in caplog.text
    totals = query_status("127.0.0.1", port)["totals"]
    assert (totals["done"], totals["failed"]) == (4, 0)  # the bounce is no failure
