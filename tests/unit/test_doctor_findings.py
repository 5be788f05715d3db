"""`cw status --why` and `cw doctor`'s pure parts (cw.launch.doctor)."""
import platform

import cloudpickle

from cw.launch.doctor import filesystem, versions, why


def snapshot(queued, workers, executors, parked=0):
    return {"totals": {"queued": queued, "running": sum(e["running"] for e in executors)},
            "workers": workers, "executors": executors, "parked": parked}


def worker(state="busy", left=None):
    return {"host": "n1", "pid": 1, "state": state, "left": left}


def executor(running=1, age=12.0, draining=False):
    return {"running": running, "age": age, "draining": draining}


def test_why_names_what_holds_the_queue():
    assert why(snapshot(0, [], [])) == ["no job waits: 0 running"]
    lines = why(snapshot(5, [], []), pending=[("123", "Resources")])
    assert lines[:2] == ["5 job(s) wait in the master's queue",
                         "worker job 123 waits in SLURM's queue: Resources"]
    assert "no worker is registered" in lines[2] and "SLURM holds" in lines[2]
    busy = why(snapshot(5, [worker(), worker("draining")], [executor(), executor(age=40.0)]))
    assert "1 worker(s) drain" in busy[1] and "all 2 executor(s) are busy" in busy[2] and "40 s" in busy[2]
    parked = why(snapshot(5, [worker("idle", left=30)], [executor(running=0)], parked=1))
    assert "could finish no queued job in time" in parked[1] and "at most 30 s" in parked[1]


def test_versions_other_than_the_clients_are_named_by_worker():
    mine = platform.python_version()
    same = {"host": "a", "pid": 1, "python": mine, "cloudpickle": cloudpickle.__version__}
    assert versions([same])[0][0] == "ok"
    odd = [{**same, "pid": 2, "cloudpickle": "2.0.0"}, {**same, "pid": 3, "python": "3.8.10"}]
    found = versions([same, *odd])
    assert [level for level, _ in found] == ["PROBLEM", "PROBLEM"]
    assert "1 worker(s) run cloudpickle 2.0.0" in found[0][1] and "a:2" in found[0][1]
    assert "1 worker(s) run python 3.8" in found[1][1] and "a:3" in found[1][1]
    assert versions([]) == [("note", "no worker is registered")]


def test_the_filesystem_of_a_path_is_its_longest_mount():
    kind, mount = filesystem("/proc/self")
    assert (kind, mount) == ("proc", "/proc")
