"""Another local user against a cluster's owner, on one machine (issue 25's
items 1 to 8): each test does what the attacker did and asserts the fix."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
from attacks import FLOOD
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
    """The owner's big-buffer files, in the owner's private /dev/shm directory."""
    names = set()
    for directory in glob.glob(f"/dev/shm/cw-{owner.uid}-*/"):
        for entry in os.scandir(directory):
            if re.fullmatch(r"cw-\d+-\d+-[0-9a-f]{32}", entry.name):
                names.add(entry.path)
    return names


def plant(other, path: str, kind: str, size: int) -> subprocess.CompletedProcess:
    """What the attacker tries to put at a name the owner's executor freed."""
    if kind == "fifo":
        code = f"import os; os.mkfifo({path!r}, 0o666)"
    else:
        code = f"open({path!r}, 'wb').write(b'\\x01' * {size}); import os; os.chmod({path!r}, 0o644)"
    return other.run([sys.executable, "-c", code])


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_retried_job_computes_on_the_owners_bytes(users, kind):
    """Item 1: the executor claimed the argument's file (freeing its name) and
    died; the attacker tries to put a file (or a FIFO) at that name. The name
    is in the owner's private directory, so the attempt fails; the retry runs
    on the owner's array. (tests/unit/test_shm.py puts such a file there as
    root, and shows that the retry still sends the owner's bytes.)"""
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
    tried = plant(other, path, kind, 8 << 20)
    assert tried.returncode != 0 and "Permission denied" in tried.stderr
    first.send_signal(signal.SIGKILL)  # the job runs again, on another executor
    out, _ = client.communicate(timeout=90)
    assert client.returncode == 0
    result = json.loads(out)
    assert result["total"] == result["expected"]


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


FAKE_MASTER = """
import sys, zmq
sock = zmq.Context.instance().socket(zmq.ROUTER)
sock.linger = 0
if sys.argv[1] == "0":
    print(sock.bind_to_random_port("tcp://127.0.0.1"), flush=True)
else:
    sock.bind(f"tcp://127.0.0.1:{sys.argv[1]}")
    print(sys.argv[1], flush=True)
got = sock.poll(int(float(sys.argv[2]) * 1000))
print("received" if got else "nothing", flush=True)
"""

CALL = """
import sys
from cw.client import ClusterExecutor
try:
    with ClusterExecutor("127.0.0.1", int(sys.argv[1]), connect_timeout=20) as ex:
        print("ran", ex.submit(pow, 6, 2).result(60))
except Exception as e:
    print(type(e).__name__, e)
"""


def test_a_fake_master_on_the_owners_address_gets_nothing_and_no_advice_to_drop_curve(users):
    """Item 4: the attacker listens without CURVE where the owner's client
    connects. The owner is told what is there, never to turn security off,
    and the attacker receives nothing of the owner's."""
    owner, other = users
    fake = other.popen([sys.executable, "-c", FAKE_MASTER, "0", "5"], stdout=subprocess.PIPE, text=True)
    port = int(fake.stdout.readline())
    said = owner.python(CALL, str(port)).stdout
    assert "does not speak CurveZMQ" in said and "nothing was sent" in said
    assert not re.search(r"\b(set|use|add|pass|try|run)\b[^.;]*--insecure|CW_INSECURE|both ends", said), said
    assert fake.communicate(timeout=30)[0].strip() == "nothing"  # in its 5 s of listening


def test_a_squatted_default_port_does_not_stop_a_local_cluster(users):
    """Item 4: the attacker holds 127.0.0.1:5494 first; the owner's local
    cluster takes a free port and the owner's program finds it."""
    owner, other = users
    squat = other.popen([sys.executable, "-c", FAKE_MASTER, "5494", "60"], stdout=subprocess.PIPE, text=True)
    if squat.stdout.readline().strip() != "5494":
        pytest.skip("127.0.0.1:5494 is taken on this machine already")
    started = cw_cli(owner, "local", "start", "-n", "1", timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        found = owner.python("from cw.client import ClusterExecutor\n"
                             "with ClusterExecutor(connect_timeout=20) as ex:\n"
                             "    print(ex.submit(pow, 2, 10).result(60))")
        assert found.stdout.strip() == "1024", found.stderr
    finally:
        assert cw_cli(owner, "local", "stop", timeout=120).returncode == 0


def test_idle_connections_of_another_user_leave_the_owner_able_to_connect(users):
    """Item 5: with the owner's master at `ulimit -n 1024`, the attacker holds
    2,000 idle TCP connections to its port; the owner's new client still
    connects and runs a job, and `cw status` answers."""
    owner, other = users
    master, port = start_master(owner, *FAST, files=1024)
    start_worker(owner, port, *FAST)
    flood = other.popen([sys.executable, "-c", FLOOD, str(port), "2000"], stdout=subprocess.PIPE,
                        text=True)
    assert flood.stdout.readline().startswith("holding 2000")
    # At full strength: up to the reserve the master keeps for admitted peers.
    wait_for(lambda: psutil.Process(master.pid).num_fds() >= 1024 - 128 - 16, timeout=60,
             what="the master to hold the attacker's connections")
    assert owner.python(CALL, str(port), timeout=120).stdout.strip() == "ran 36"
    status = cw_cli(owner, "status", "--timeout", "30", env={"CW_PORT": str(port)})
    assert status.returncode == 0 and "1 done" in status.stdout, status.stderr
    assert psutil.Process(master.pid).num_fds() <= 1024


def test_the_dashboard_is_the_owners_alone(users):
    """Item 6: the attacker, without the token the owner's master.json
    holds, gets 403; 200 idle connections start no thread in the master."""
    owner, other = users
    master, _ = start_master(owner, "--http-port", "0")
    url = json.loads((owner.cw_home / "default" / "master.json").read_text())["http"]
    base = url.rstrip("/").rsplit("/", 1)[0]
    probe = ("import sys, urllib.request, urllib.error\n"
             "try: print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"
             "except urllib.error.HTTPError as e: print(e.code)")
    for path in ("/", "/api/status"):
        assert other.run([sys.executable, "-c", probe, base + path]).stdout.strip() == "403"
    assert other.run(["cat", str(owner.cw_home / "default" / "master.json")]).returncode != 0
    assert owner.run([sys.executable, "-c", probe, url + "api/status"]).stdout.strip() == "200"
    threads = psutil.Process(master.pid).num_threads()
    port = int(base.rsplit(":", 1)[1])
    hold = ("import socket, sys\n"
            "held = [socket.create_connection(('127.0.0.1', int(sys.argv[1]))) for _ in range(200)]\n"
            "print('holding', flush=True); sys.stdin.read()")
    idle = other.popen([sys.executable, "-c", hold, str(port)], stdout=subprocess.PIPE, text=True)
    assert idle.stdout.readline().strip() == "holding"
    assert owner.run([sys.executable, "-c", probe, url + "api/status"]).stdout.strip() == "200"
    assert psutil.Process(master.pid).num_threads() <= threads


SEQUENTIAL = """
import sys
from cw.client import ClusterExecutor
with ClusterExecutor("127.0.0.1", int(sys.argv[1]), connect_timeout=20) as ex:
    print(sum(ex.submit(pow, i, 2).result(60) for i in range(300)))
"""


def test_directories_another_user_made_first_do_not_turn_lanes_off(users):
    """Item 7: the attacker makes the directories cw used to put lanes and
    blobs in (/dev/shm/cw-lanes-UID, cw-blobs-UID); the owner's sequential
    jobs still take a lane, and `cw status` says no lane is off."""
    owner, other = users
    for name in (f"cw-lanes-{owner.uid}", f"cw-blobs-{owner.uid}"):
        done = other.run(["mkdir", "-m", "0777", f"/dev/shm/{name}"])
        assert done.returncode == 0, done.stderr
    _, port = start_master(owner, *FAST)
    start_worker(owner, port, *FAST)
    ran = owner.python(SEQUENTIAL, str(port), timeout=120)
    assert ran.stdout.strip() == str(sum(i * i for i in range(300))), ran.stderr
    status = cw_cli(owner, "status", "--json", env={"CW_PORT": str(port)})
    snap = json.loads(status.stdout)
    assert snap["counts"]["laned"] > 0 and snap["lanes_off"] == {}
    assert "lanes off" not in cw_cli(owner, "status", env={"CW_PORT": str(port)}).stdout


PLANT = """
import os, sys
ns = os.stat("/proc/self/ns/pid").st_ino
for i in range(int(sys.argv[1])):  # named like cw's files, after a pid that is gone
    open(f"/dev/shm/cw-{ns}-4194000-{i:032x}", "wb").close()
print("planted", flush=True)
"""


def test_files_another_user_planted_are_not_swept_nor_claimed(users):
    """Item 8: 100,000 files named like cw's in /dev/shm, of the attacker's;
    the owner's cluster starts and runs, removes none, and its logs claim no
    removal."""
    owner, other = users
    planted = other.run([sys.executable, "-c", PLANT, "100000"], timeout=300)
    assert planted.stdout.strip() == "planted", planted.stderr
    try:
        started = cw_cli(owner, "local", "start", "-n", "1", timeout=120)
        assert started.returncode == 0, started.stderr
        ran = owner.python(SEQUENTIAL.replace('"127.0.0.1", int(sys.argv[1]), ', ""), timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert cw_cli(owner, "local", "stop", timeout=120).returncode == 0
        left = sum(1 for name in os.listdir("/dev/shm") if name.startswith("cw-") and "-4194000-" in name)
        assert left == 100_000
        logs = "".join(p.read_text() for p in (owner.cw_home / "default" / "logs").glob("*.log"))
        assert logs and "removed" not in logs
    finally:
        for name in os.listdir("/dev/shm"):
            if "-4194000-" in name:
                os.unlink(f"/dev/shm/{name}")
