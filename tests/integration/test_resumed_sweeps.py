"""A journaled sweep resumes (issue 27): the client is killed halfway, the
rerun submits only what is missing, and a changed function is caught."""
import signal
import subprocess
import sys

from conftest import wait_for

from cw.launch import query_status

SWEEP = """
import sys, time
from cw.client import ClusterExecutor

def simulate(x):
    time.sleep(0.002)
    return x * x + {offset}

port, journal, mismatch = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with ClusterExecutor("127.0.0.1", port, journal=journal, journal_mismatch=mismatch, connect_timeout=20) as ex:
    for i, value in enumerate(ex.map(simulate, range(1000))):
        print(i, value, flush=True)
    print("taken", ex.journal.hits, flush=True)
"""


def sweep(port, journal, offset=0, mismatch="refuse"):
    return subprocess.Popen([sys.executable, "-c", SWEEP.format(offset=offset), str(port), str(journal),
                             mismatch], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc) -> tuple[list[int], int]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.split("\n")
    values = [int(line.split()[1]) for line in lines if line and not line.startswith("taken")]
    taken = int(next(line for line in lines if line.startswith("taken")).split()[1])
    return values, taken


def submitted(port) -> int:
    return query_status("127.0.0.1", port)["counts"]["submitted"]


def test_a_sweep_killed_halfway_submits_only_what_is_missing(cluster, tmp_path):
    port = cluster(2)
    journal = tmp_path / "sweep.cwj"
    first = sweep(port, journal)
    for _ in range(500):  # results it printed, each kept before
        assert first.stdout.readline()
    first.send_signal(signal.SIGKILL)  # mid-sweep, maybe mid-write
    first.communicate(timeout=30)
    before = submitted(port)
    values, taken = finish(sweep(port, journal))
    assert values == [x * x for x in range(1000)]  # all, in order, as an uninterrupted run gives them
    assert 500 <= taken < 1000  # what it printed was kept before it printed it
    wait_for(lambda: submitted(port) - before == 1000 - taken, what="the master's count of the rerun's jobs")
    before = submitted(port)
    values, taken = finish(sweep(port, journal))  # a third run: nothing left to submit
    assert values == [x * x for x in range(1000)] and taken == 1000
    counts = query_status("127.0.0.1", port)["counts"]
    assert counts["submitted"] == before and counts["duplicates"] == 0 and counts["lost"] == 0


def test_a_changed_function_is_refused_or_run_again(cluster, tmp_path):
    port = cluster(1)
    journal = tmp_path / "sweep.cwj"
    values, taken = finish(sweep(port, journal))
    assert taken == 0
    changed = sweep(port, journal, offset=1)
    out, err = changed.communicate(timeout=60)
    assert changed.returncode != 0 and out == ""
    assert "JournalMismatchError" in err and "__main__.simulate computed by other code" in err
    before = submitted(port)
    values, taken = finish(sweep(port, journal, offset=1, mismatch="ignore"))
    assert values == [x * x + 1 for x in range(1000)] and taken == 0
    wait_for(lambda: submitted(port) - before == 1000, what="every job run again")
    values, taken = finish(sweep(port, journal, offset=1))  # the new code is the journal's now
    assert values == [x * x + 1 for x in range(1000)] and taken == 1000
