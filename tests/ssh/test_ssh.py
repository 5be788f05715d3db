"""cw ssh start|stop|status against real sshd "machines" (tests/ssh/sshbox.sh)."""
import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import wait_for

from cw.client import ClusterExecutor
from cw.launch.sshcmd import remote_command

from . import sshjobs
from .sshbed import NET, ROOT, cw_processes

pytestmark = pytest.mark.ssh
ODD = "it's a \"quoted\" dir"


def cw_ssh(*args, cwd=ROOT, timeout=120):
    return subprocess.run([sys.executable, "-m", "cw.cli", "ssh", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def write_csv(path, rows):
    """Rows as lists, written as a spreadsheet would (quotes doubled)."""
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path.write_text("# address, ssh_user, ssh_port, local_ssh_file, cpu_limit\n" + out.getvalue())
    return str(path)


def odd_key(box, tmp_path):
    """The test key, at a path with spaces and quotes (ssh insists on mode 0600)."""
    folder = tmp_path / ODD
    folder.mkdir(exist_ok=True)
    key = folder / "my 'key'"
    shutil.copy(box.key, key)
    key.chmod(0o600)
    return key


def status_json():
    done = cw_ssh("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_start_run_status_stop_on_two_machines(sshbox, ssh_home, tmp_path):
    one, two = sshbox.addresses
    key = odd_key(sshbox, tmp_path)
    machines = write_csv(tmp_path / "lab.csv", [[one, " ", "", key, "1"],
                                                [two, "root", "22", sshbox.key, ""]])
    done = cw_ssh("start", machines, "--port", "0", "--cpu-limit", "1", "--connect-timeout", "5",
                  *sshbox.ssh_options)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"master at {NET}.1:" in lines[0] and "1 local worker(s) with 1 executor(s)" in lines[0]
    assert any(f"{one}:22" in line and "connected" in line and "with 1 executor(s) (cluster directory "
               "shared)" in line for line in lines), done.stdout
    assert any(f"root@{two}:22" in line and "with 2 executor(s) (workers' key copied)" in line
               for line in lines), done.stdout

    # cwssh2 cannot see the cluster directory: it got the keys a worker needs,
    # privately: the workers' pair (it can only serve), never the client's secret.
    state = json.loads((ssh_home / "default" / "ssh.json").read_text())
    private = Path(state["homes"][1]).expanduser() / "default" / "keys"
    files = sorted(str(p.relative_to(private)) for p in private.rglob("*"))
    assert files == ["master.key", "worker", "worker/worker.key", "worker/worker.key_secret"]
    assert all(p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600)
               for p in [private, *private.rglob("*")])

    with ClusterExecutor(connect_timeout=30) as ex:
        where = list(ex.map(sshjobs.address, [0.01] * 300))
    assert {one, two} <= set(where) <= {one, two, f"{NET}.1"}

    st = status_json()
    executors = {m["machine"]: [w["executors"] for w in m["workers"] if w["registered"]]
                 for m in st["machines"]}
    assert executors == {f"{one}:22": [1], f"root@{two}:22": [2]}  # cpu_limit 1, blank = both CPUs
    assert [w["executors"] for w in st["others"]] == [1]  # --cpu-limit 1 on this machine
    text = cw_ssh("status").stdout
    assert f"{one}:22" in text and f"root@{two}:22" in text and text.count("registered, ") == 3

    stop = cw_ssh("stop")
    assert stop.returncode == 0, stop.stderr
    assert "removed the copied key" in stop.stdout
    assert cw_processes() == []
    assert not private.parent.parent.exists()
    assert not (ssh_home / "default" / "ssh.json").exists()
    assert not (ssh_home / "default" / "master.json").exists()


def test_bad_rows_are_reported_and_the_good_machine_works(sshbox, ssh_home, tmp_path):
    one, two = sshbox.addresses
    machines = write_csv(tmp_path / "lab.csv", [[one, "", "", sshbox.key, 1],
                                           [two, "", "", sshbox.wrong_key, 1],
                                           [sshbox.unreachable, "", "", sshbox.key, 1]])
    done = cw_ssh("start", machines, "--port", "0", "--no-local-workers", "--connect-timeout", "3",
                  *sshbox.ssh_options)
    assert done.returncode == 1
    report = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "connected, worker pid" in report[f"{one}:22"]
    assert "SSH error: auth refused" in report[f"{two}:22"] and "Permission denied" in report[f"{two}:22"]
    assert "SSH error: unreachable" in report[f"{sshbox.unreachable}:22"]
    assert "2 of 3 machine(s) failed" in done.stderr and "Traceback" not in done.stderr
    with ClusterExecutor(connect_timeout=30) as ex:
        assert set(ex.map(sshjobs.address, [0] * 20)) == {one}
    machines = {m["machine"]: m for m in status_json()["machines"]}
    assert machines[f"{two}:22"]["error"].startswith("not started: auth refused")
    assert [w["registered"] for w in machines[f"{one}:22"]["workers"]] == [True]
    stop = cw_ssh("stop")
    assert stop.returncode == 0, stop.stderr
    assert cw_processes() == []


def test_missing_python_is_named(sshbox, ssh_home, tmp_path):
    machines = write_csv(tmp_path / "lab.csv", [[sshbox.addresses[0], "", "", sshbox.key]])
    done = cw_ssh("start", machines, "--port", "0", "--no-local-workers", "--python", "/no/such/python3",
                  *sshbox.ssh_options)
    assert done.returncode == 1
    assert "SSH error: python missing: no /no/such/python3 on that machine" in done.stdout
    assert cw_ssh("stop").returncode == 0


def test_paths_with_spaces_and_quotes_survive(sshbox, ssh_home, tmp_path, monkeypatch):
    """The working directory, the python path, CW_HOME and the key all hold spaces and quotes."""
    cwd = tmp_path / ODD / "work dir"
    cwd.mkdir(parents=True)
    python = tmp_path / ODD / "py 'thon'"
    python.symlink_to(sys.executable)
    monkeypatch.setenv("CW_HOME", str(ssh_home / ODD))
    key = odd_key(sshbox, tmp_path)
    write_csv(cwd / "lab.csv", [[sshbox.addresses[0], "", "", key, 1]])
    done = cw_ssh("start", "lab.csv", "--port", "0", "--no-local-workers", "--python", str(python),
                  *sshbox.ssh_options, cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    (worker,) = [w for m in status_json()["machines"] for w in m["workers"]]
    proc = psutil.Process(worker["pid"])  # one process table for all "machines" here
    assert proc.cwd() == str(cwd)
    assert proc.cmdline()[0] == str(python)
    assert proc.environ()["CW_HOME"] == str(ssh_home / ODD)
    with ClusterExecutor(connect_timeout=30) as ex:
        assert ex.submit(sshjobs.address).result(60) == sshbox.addresses[0]
    assert cw_ssh("stop").returncode == 0
    assert cw_processes() == []


def test_workers_exit_when_the_master_dies(sshbox, ssh_home, tmp_path):
    machines = write_csv(tmp_path / "lab.csv", [[a, "", "", sshbox.key, 1] for a in sshbox.addresses])
    done = cw_ssh("start", machines, "--port", "0", "--no-local-workers", "--master-timeout", "2",
                  *sshbox.ssh_options)
    assert done.returncode == 0, done.stdout + done.stderr
    # A supervisor, an executor and its express spare on each machine.
    wait_for(lambda: len(cw_processes()) == 6, what="the workers' processes")
    master = json.loads((ssh_home / "default" / "master.json").read_text())["pid"]
    os.kill(master, signal.SIGKILL)  # the head "disappears"
    wait_for(lambda: cw_processes() == [], timeout=30, interval=0.1, what="no worker left on any machine")
    stop = cw_ssh("stop")  # removes the keys copied to cwssh2
    assert stop.returncode == 0, stop.stderr
    assert "stopped 0 worker(s); removed the copied key" in stop.stdout


def test_remote_command_survives_a_real_shell(tmp_path):
    """What ssh hands the remote shell: odd cwd and python paths come out intact."""
    cwd = tmp_path / ODD
    cwd.mkdir()
    python = cwd / "py 'thon'"
    python.symlink_to(sys.executable)
    line = remote_command(str(python), str(cwd), "status", {"PYTHONPATH": str(ROOT)})
    request = {"cluster": "c", "mid": "m", "token": "t", "homes": [str(cwd / "home 'x'")]}
    done = subprocess.run(["sh", "-c", line], input=json.dumps(request), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["workers"] == []
    assert shlex.split(line)[1] == str(cwd)
