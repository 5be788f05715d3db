"""Another local user against a cluster's owner, on one machine (issue 25's
items 1 to 8): each test does what the attacker did and asserts the fix."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
from conftest import wait_for

from .conftest import start_master, start_worker

FAST = ("--heartbeat", "0.2", "--liveness", "5")

BIG_ARGUMENT = """
import json, os, sys, time
import numpy
from cw.client import ClusterExecutor

def total(a):
    time.sleep(3)  # long enough to be killed in
    return float(a.sum())

data = numpy.arange(1 << 20, dtype=numpy.float64)  # 8 MiB: goes through /dev/shm
with ClusterExecutor("127.0.0.1", int(sys.argv[1]), heartbeat=0.2, liveness=5, connect_timeout=20) as ex:
    print(json.dumps({"total": ex.submit(total, data).result(120), "expected": float(data.sum())}))
"""


def executors(worker: psutil.Process) -> list[psutil.Process]:
    return [p for p in worker.children(recursive=True) if "cw.executor" in p.cmdline()]


def owners_shm(owner) -> set[str]:
    names = set()
    for entry in os.scandir("/dev/shm"):
        try:
            if re.fullmatch(r"cw-\d+-\d+-[0-9a-f]{32}", entry.name) and entry.stat().st_uid == owner.uid:
                names.add(entry.path)
        except OSError:
            pass
    return names


def plant(other, path: str, kind: str, size: int) -> None:
    """What the attacker puts at a name the owner's executor freed."""
    if kind == "fifo":
        code = f"import os; os.mkfifo({path!r}, 0o666)"
    else:
        code = f"open({path!r}, 'wb').write(b'\\x01' * {size}); import os; os.chmod({path!r}, 0o644)"
    done = other.run([sys.executable, "-c", code])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_retried_job_computes_on_the_owners_bytes(users, kind):
    """Item 1: the executor claimed the argument's file (freeing its name) and
    died; the attacker put a file (or a FIFO) at that name. The retry runs on
    the owner's array, and the client does not block on the FIFO."""
    owner, other = users
    _, port = start_master(owner, *FAST)
    worker = psutil.Process(start_worker(owner, port, *FAST).pid)
    first = wait_for(lambda: executors(worker), what="the executor")[0]
    first.suspend()  # so that the argument's file waits, named, until we saw it
    before = owners_shm(owner)
    client = owner.popen([sys.executable, "-c", BIG_ARGUMENT, str(port)],
                         stdout=subprocess.PIPE, text=True)
    (path,) = wait_for(lambda: owners_shm(owner) - before, what="the argument's file")
    first.resume()
    wait_for(lambda: not os.path.lexists(path), what="the executor to claim the file")
    plant(other, path, kind, 8 << 20)
    first.send_signal(signal.SIGKILL)  # the job runs again, on another executor
    out, _ = client.communicate(timeout=90)
    assert client.returncode == 0
    result = json.loads(out)
    assert result["total"] == result["expected"]
    os.unlink(path)
