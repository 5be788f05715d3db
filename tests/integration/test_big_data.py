"""Big data moves once (cw.blobs): real master, workers and a client process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, wait_for, wait_workers

from cw.launch import query_status

CLIENT = Path(__file__).with_name("big_data_client.py")
MB50 = 50 * 1024 * 1024 // 8


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def sweep(port: int, how: str, n: int, env: dict) -> dict:
    done = subprocess.run([sys.executable, str(CLIENT), str(port), how, str(n)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def expected(n: int) -> float:
    return float(sum(p % MB50 + p for p in range(n)))


# (how the client passes the array, its environment, how many times the blob
# is sent): CW_SHM=0 makes the client a stranger to its executors' host, as on
# a cluster, where the blob goes to the host once; CW_DIRECT=0 sends it through
# the master instead of the direct path (cw.direct). On its executors' host a
# client puts its own copy in the host's cache: nothing is sent.
ACROSS = {"CW_SHM": "0"}
CASES = {"closure": ("closure", {}, 0), "closure-across-hosts": ("closure", ACROSS, 1),
         "argument-across-hosts": ("argument", ACROSS, 1), "shared": ("shared", {}, 0),
         "shared-across-hosts": ("shared", ACROSS, 1),
         "closure-via-master": ("closure", {**ACROSS, "CW_DIRECT": "0"}, 1)}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", list(CASES))
def test_a_50_mb_array_goes_to_each_executor_once(procs, case):
    """2,000 jobs of one function closing over a 50 MB array, taking it as an
    argument, or as a handle from ``share``, on 2 workers: the client keeps
    one copy, the master holds at most a chunk, and the counters show the
    blob sent once to the host, never per job nor per executor: over the
    direct path, or through the master when that is off; on one host, not at all."""
    how, env, sends = CASES[case]
    master, port = procs.master()
    for _ in range(2):
        procs.worker(port)
    wait_workers(port, 2)
    got = sweep(port, how, 2000, env)
    assert got["sum"] == expected(2000)
    assert got["peak_mib"] < 400, got
    assert peak_mib(master.pid) < 150
    counts = wait_for(lambda: (lambda c: c if c["done"] == 2000 else None)(
        query_status("127.0.0.1", port)["counts"]), what="every job counted")
    assert counts["lost"] == 0
    sent, sent_bytes = got["direct"]["served"], got["direct"]["served_bytes"]
    if env.get("CW_DIRECT") == "0":
        sent, sent_bytes = counts["blobs_routed"], counts["blob_bytes"]
    else:
        assert counts["blobs_routed"] == counts["blob_bytes"] == 0  # none of it crossed the master
    # Once to the host: its other executor maps the host's copy (cw.worker.hostcache).
    assert sent == sends and sends * (50 << 20) <= sent_bytes <= sends * (51 << 20)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_on_one_host_an_argument_takes_shared_memory_not_the_master(procs):
    """Client and executors on one host: each job's array goes through
    /dev/shm as before (no hash, no blob), and none of it crosses the master."""
    master, port = procs.master()
    for _ in range(2):
        procs.worker(port)
    wait_workers(port, 2)
    got = sweep(port, "argument", 500, {})
    assert got["sum"] == expected(500) and got["peak_mib"] < 400, got
    assert peak_mib(master.pid) < 150
    # Jobs that took a lane are counted at their executor's next heartbeat.
    counts = wait_for(lambda: (lambda c: c if c["done"] == 500 else None)(
        query_status("127.0.0.1", port)["counts"]), what="every job counted")
    assert counts["blobs_routed"] == 0 and counts["blob_bytes"] == 0


def _mapping_of(table) -> str:
    """The file the array's memory is mapped from in this process, or "" for
    memory of its own."""
    addr = table.__array_interface__["data"][0]
    for line in open("/proc/self/maps"):
        fields = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in fields[0].split("-"))
        if low <= addr < high:
            return fields[5].strip() if len(fields) > 5 else ""
    return ""


def _where(table):
    """A closure over ``table`` that says which process runs it and where its
    copy of the array lives."""
    def job(p):
        import os

        return os.getpid(), _mapping_of(table), float(table[p])

    return job


def _where_shared(table, p):
    import os

    return os.getpid(), _mapping_of(table), float(table[p])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["closure", "share"])
def test_the_executors_of_a_host_map_one_copy_of_a_big_array(procs, how):
    """Two executors of one host run jobs that need a 20 MB array, closed
    over or ``share``d: both find the array in the same file, the host's
    copy of the blob (cw.worker.hostcache), mapped, not each in memory of
    its own."""
    import numpy

    from cw.client import ClusterExecutor

    master, port = procs.master()
    for _ in range(2):
        procs.worker(port)
    wait_workers(port, 2)
    table = numpy.arange(20 * 2**20 // 8, dtype=numpy.float64)
    seen: dict = {}
    with ClusterExecutor("127.0.0.1", port, connect_timeout=30) as ex:
        if how == "closure":
            job, head = _where(table), []
        else:
            job, head = _where_shared, [ex.share(table)]
        for _ in range(50):  # until both executors have run one (each TASK goes to an idle one)
            points = range(0, 2000, 100)
            results = ex.map(job, *([h] * len(points) for h in head), points)
            for p, (pid, path, value) in zip(points, results):
                seen[pid] = path
                assert value == p
            if len(seen) == 2:
                break
    assert len(seen) == 2, seen
    (path,) = set(seen.values())
    assert "/blobs/" in path, seen
