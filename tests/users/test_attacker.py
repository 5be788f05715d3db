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


def cw_cli(user, *args: str, env: dict | None = None, timeout: float = 60):
    return user.run([sys.executable, "-m", "cw.cli", *args], env=env, timeout=timeout)


def one_line_naming(done, path) -> str:
    """The refusal: a non-zero exit and one line that names ``path``, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and str(path) in lines[0], done.stderr
    assert "insecure" not in lines[0].lower()
    return lines[0]


def test_a_cw_home_another_user_made_first_is_refused(users, bed):
    """Item 2: the attacker made the owner's $CW_HOME first and put a cluster
    directory there: an ssh.json whose ProxyCommand runs their command, a pid
    record naming an unrelated process of the owner's. The owner's commands
    refuse the directory and touch nothing."""
    owner, other = users
    home = other.make(bed.tmp / "owner-cw", 0o755)
    cdir = other.make(home / "default", 0o755)
    other.make(cdir / "pids", 0o755)
    ran = bed.tmp / "proxy-command-ran"
    victim = psutil.Process(owner.popen(["sleep", "600"]).pid)
    planted = {
        "ssh.json": {"cluster": "default", "token": "t", "homes": [], "started": {},
                     "machines": [{"address": "127.0.0.1", "line": 1}],
                     "options": {"python": sys.executable, "cwd": "/", "env": {}, "connect_timeout": 5,
                                 "ssh_options": [f"ProxyCommand=touch {ran}"]}},
        "pids/worker-1.json": {"pid": victim.pid, "create_time": victim.create_time(), "role": "worker",
                               "log": str(cdir / "logs" / "x.log")},
    }
    for name, record in planted.items():
        (cdir / name).write_text(json.dumps(record))
        os.chown(cdir / name, other.uid, other.gid)
    env = {"CW_HOME": str(home)}
    for args in (["ssh", "status"], ["local", "stop"], ["status"], ["logs"]):
        one_line_naming(cw_cli(owner, *args, env=env), home)
    assert not ran.exists() and victim.is_running()


def test_log_files_are_private_and_a_log_dir_another_user_made_is_refused(users, bed):
    """Item 3: job output in the owner's logs is not readable by the attacker,
    and a CW_LOG_DIR the attacker made first (with links under cw's log
    names) is refused before anything is written there."""
    owner, other = users
    logs = owner.make(owner.home / "logs", 0o755)  # a plain mkdir: 0755
    env = {"CW_LOG_DIR": str(logs)}
    started = cw_cli(owner, "local", "start", "-n", "1", env=env, timeout=120)
    assert started.returncode == 0, started.stderr
    assert cw_cli(owner, "local", "stop", env=env, timeout=120).returncode == 0
    files = [p for p in logs.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    peek = other.run(["cat", *map(str, files)])
    assert peek.returncode != 0 and not peek.stdout

    trap = other.make(bed.tmp / "logs", 0o777)
    target = bed.tmp / "written-through-a-link"
    for role in ("master", "worker"):
        os.symlink(target, trap / f"{role}.log")
    one_line_naming(cw_cli(owner, "local", "start", "-n", "1", env={"CW_LOG_DIR": str(trap)}), trap)
    assert not target.exists()
    assert not (owner.cw_home / "default" / "master.json").exists()
