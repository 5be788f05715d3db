"""Big data moves once (cw.blobs): real master, workers and a client process."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, wait_workers

from cw.launch import query_status

CLIENT = Path(__file__).with_name("big_data_client.py")
MB50 = 50 * 1024 * 1024 // 8


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def sweep(port: int, how: str, n: int) -> dict:
    done = subprocess.run([sys.executable, str(CLIENT), str(port), how, str(n)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def expected(n: int) -> float:
    return float(sum(p % MB50 + p for p in range(n)))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_closure_over_a_50_mb_array_goes_to_each_executor_once(procs):
    """2,000 jobs of one function closing over 50 MB, on 2 workers: the
    client keeps one copy, the master holds at most a chunk, and the
    counters show the blob routed once to each executor."""
    master, port = procs.master()
    for _ in range(2):
        procs.worker(port)
    wait_workers(port, 2)
    got = sweep(port, "closure", 2000)
    assert got["sum"] == expected(2000)
    assert got["peak_mib"] < 400, got
    assert peak_mib(master.pid) < 150
    counts = query_status("127.0.0.1", port)["counts"]
    assert counts["done"] == 2000 and counts["lost"] == 0
    assert 1 <= counts["blobs_routed"] <= 2  # one per executor that ran a job, never per job
    assert 50 << 20 <= counts["blob_bytes"] <= 2 * (51 << 20)
