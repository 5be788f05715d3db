"""On a shared node: directories another user made are refused, log files are
private and never written through a link, a pid record does not make cw
signal a process that is not its own, and `cw logs` escapes what a job printed.

Another user is simulated by chown to nobody (uid 65534), which needs root.
"""
import json
import os
import re
import stat
import subprocess
import sys
import textwrap

import psutil
import pytest
from click.testing import CliRunner
from conftest import ROOT, wait_for

from cw.cli import main
from cw.cluster import cluster_dir, trusted
from cw.errors import ClusterError
from cw.launch.sshcmd import parse_machines
from cw.logfiles import role_log_file

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")


def cw(*args, **env):
    """The real command line, in a process of its own (its stderr is what a user sees)."""
    return subprocess.run([sys.executable, "-m", "cw.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **env}, timeout=60)


def foreign(path):
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    return path


def one_line_error(done, says):
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert says in done.stderr, done.stderr


@pytest.fixture
def sleeper():
    """An unrelated live process of ours."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait(10)


def plant_record(cdir, proc, role="worker"):
    """A pid record naming ``proc`` with its true create time (anyone may read it in /proc)."""
    (cdir / "pids").mkdir(parents=True, exist_ok=True)
    record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "role": role, "log": ""}
    path = cdir / "pids" / f"{role}-{proc.pid}.json"
    path.write_text(json.dumps(record))
    return path


def plant_ssh_json(cdir, mark):
    """An ssh.json whose ssh options would run a command of the attacker's."""
    state = {"cluster": "default", "token": "0" * 16, "homes": [str(cdir.parent), str(cdir.parent)],
             "options": {"python": sys.executable, "ssh_options": [f"ProxyCommand=touch {mark}"],
                         "connect_timeout": 1, "env": {}},
             "machines": [{"address": "127.0.0.1", "user": None, "port": None, "key": None,
                           "cpu_limit": None, "line": 1}],
             "started": {"127.0.0.1:22": {"machine": "127.0.0.1:22", "pid": 1}}}
    (cdir / "ssh.json").write_text(json.dumps(state))


# -- $CW_HOME and the cluster directory ------------------------------------------
@as_root
@pytest.mark.parametrize("whose", ["home", "cluster"])
def test_a_directory_another_user_made_is_refused_by_every_command(cw_home, tmp_path, sleeper, whose):
    cdir = foreign(cw_home / "default") if whose == "cluster" else foreign(cw_home) / "default"
    cdir.mkdir(mode=0o700, exist_ok=True)
    plant_record(cdir, sleeper)
    plant_ssh_json(cdir, tmp_path / "ran")
    (cdir / "logs").mkdir()
    (cdir / "logs" / "worker-x-1.log").write_text("2026-01-01 10:00:00,000 INFO x\n")
    refused = cdir if whose == "cluster" else cw_home
    fix = "--cluster" if whose == "cluster" else "set CW_HOME to a directory of yours"
    for args in (["ssh", "status"], ["local", "stop"], ["logs"], ["status"], ["keys", "list"]):
        one_line_error(cw(*args), f"Error: refusing {refused}: owned by uid {NOBODY}, not you (uid 0); ")
        assert fix in cw(*args).stderr
    assert sleeper.poll() is None  # the planted record killed nothing
    assert not (tmp_path / "ran").exists()  # the planted ProxyCommand never ran
    with pytest.raises(ClusterError, match="refusing"):
        cluster_dir(create=True)  # nor is anything made inside


def test_a_cluster_directory_others_may_write_in_is_refused(cw_home):
    cdir = cluster_dir(create=True)
    os.chmod(cdir, 0o770)
    one_line_error(cw("keys", "list"), f"Error: refusing {cdir}: others may write in it (mode 0770); "
                                       f"chmod 700 {cdir}")
    os.chmod(cdir, 0o700)
    os.chmod(cw_home, 0o777)
    one_line_error(cw("keys", "list"), f"Error: refusing {cw_home}: others may write in it (mode 0777); "
                                       f"chmod go-w {cw_home}")
    os.chmod(cw_home, 0o755)  # readable is fine for $CW_HOME ...
    assert cw("keys", "list").returncode == 0
    os.chmod(cdir, 0o750)  # ... and a cluster directory of ours cw tightens where it makes things
    assert cw("keys", "list").returncode == 0
    assert stat.S_IMODE(cdir.stat().st_mode) == 0o700


@as_root
def test_a_link_another_user_planted_as_cw_home_is_refused(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "owner-cw"
    link.symlink_to(mine)
    os.lchown(link, NOBODY, NOBODY)
    monkeypatch.setenv("CW_HOME", str(link))
    with pytest.raises(ClusterError, match=f"refusing {link}: a link owned by uid {NOBODY}, not you"):
        cluster_dir()


def test_cw_makes_cw_home_and_the_cluster_directory_0700(tmp_path, monkeypatch):
    monkeypatch.setenv("CW_HOME", str(tmp_path / "new" / "cw"))
    old = os.umask(0o022)
    try:
        cdir = cluster_dir(create=True)
    finally:
        os.umask(old)
    for path in (cdir.parent, cdir, cdir / "pids", cdir / "logs"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


# -- log files ---------------------------------------------------------------------
@as_root
def test_a_log_dir_another_user_made_is_refused(cw_home, tmp_path, monkeypatch):
    logs = foreign(tmp_path / "shared-logs")
    monkeypatch.setenv("CW_LOG_DIR", str(logs))
    says = f"refusing {logs}: owned by uid {NOBODY}, not you (uid 0); remove it or set CW_LOG_DIR"
    done = CliRunner().invoke(main, ["local", "start", "-n", "1"])
    assert done.exit_code == 1 and f"Error: {says}" in done.output, done.output
    assert list((cw_home / "default" / "pids").glob("*.json")) == []  # nothing started
    with pytest.raises(ClusterError, match=re.escape(says)):
        role_log_file(None, "worker")  # a worker or master started by hand
    one_line_error(cw("logs"), says)
    os.chown(logs, 0, 0)
    os.chmod(logs, 0o777)
    with pytest.raises(ClusterError, match=f"refusing {logs}: others may write in it .*chmod go-w"):
        role_log_file(None, "worker")
    os.chmod(logs, 0o1777)  # root's and sticky, like /tmp or an image's /var/log/cw: a log dir, not a home
    assert role_log_file(None, "worker").parent == logs
    with pytest.raises(ClusterError, match=f"refusing {logs}: others may write in it"):
        trusted(logs, "fix")
    os.chown(logs, NOBODY, NOBODY)  # another user's sticky directory is still refused
    with pytest.raises(ClusterError, match=f"refusing {logs}: owned by uid {NOBODY}"):
        role_log_file(None, "worker")


LOG_IN_PROCESS = textwrap.dedent("""
    import logging, os, sys
    from pathlib import Path
    from cw.logfiles import log_path, role_log_file, setup_logging
    if sys.argv[1] != "-":  # a link planted where this process will log
        log_path(Path(os.environ["CW_LOG_DIR"]), "worker").symlink_to(sys.argv[1])
    logfile = role_log_file(None, "worker")
    setup_logging("info", logfile)
    logging.getLogger("cw.test").info("the job printed a secret")
    print(logfile)
""")


def test_log_files_are_0600_in_a_log_dir_made_with_plain_mkdir(cw_home, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    done = subprocess.run([sys.executable, "-c", LOG_IN_PROCESS, "-"], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "CW_LOG_DIR": str(logs)}, timeout=60)
    assert done.returncode == 0, done.stderr
    logfile = logs / os.path.basename(done.stdout.strip())
    assert "the job printed a secret" in logfile.read_text()
    assert stat.S_IMODE(logfile.stat().st_mode) == 0o600


@pytest.mark.parametrize("exists", [True, False])
def test_a_link_under_a_log_name_is_not_followed(cw_home, tmp_path, exists):
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    target = tmp_path / "victim"
    if exists:
        target.write_text("untouched\n")
    done = subprocess.run([sys.executable, "-c", LOG_IN_PROCESS, str(target)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "CW_LOG_DIR": str(logs)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "cannot write the log file" in done.stderr and "logging to stderr only" in done.stderr
    assert "the job printed a secret" in done.stderr
    assert (target.read_text() == "untouched\n") if exists else not target.exists()


def test_a_master_started_by_hand_logs_to_a_0600_file(procs, cw_home, tmp_path, monkeypatch):
    logs = tmp_path / "node-logs"
    logs.mkdir(mode=0o755)
    monkeypatch.setenv("CW_LOG_DIR", str(logs))
    proc, _ = procs.master()
    logfile = wait_for(lambda: list(logs.glob(f"master-*-{proc.pid}.log")), what="the master's log")[0]
    assert stat.S_IMODE(logfile.stat().st_mode) == 0o600


def test_cw_logs_escapes_control_characters(cw_home):
    logs = cluster_dir(create=True) / "logs"
    hostile = "2026-01-01 10:00:00,000 INFO cw.job[7]: job 1 stdout: \x1b]0;owned\x07\x1b[2Jdone\x08\tok\n"
    (logs / "worker-node1-7.log").write_text(hostile)
    done = CliRunner().invoke(main, ["logs"])
    assert done.exit_code == 0, done.output
    assert "job 1 stdout: \\x1b]0;owned\\x07\\x1b[2Jdone\\x08\tok" in done.output
    assert "\x1b" not in done.output and "\x07" not in done.output and "\x08" not in done.output


def test_cw_logs_follow_escapes_control_characters(tmp_path):
    from cw.logfiles import follow

    path = tmp_path / "worker-node1-7.log"
    path.write_text("")
    lines, turns = [], []

    def stop():
        if not turns:
            path.write_bytes("job 1 stdout: \x1b[31mred\r\x9b\n".encode())
        turns.append(1)
        return bool(lines) or len(turns) > 100

    follow(tmp_path, None, lines.append, poll=0.01, stop=stop)
    assert lines == ["worker-node1-7| job 1 stdout: \\x1b[31mred\\x0d\\x9b"]


# -- pid records -------------------------------------------------------------------
def _worker_elsewhere(cw_home, tmp_path, what):
    """A real, waiting ``python -m cw.worker`` of another cluster, or of the same name in another CW_HOME."""
    env = {**os.environ, "CW_HOME": str(cw_home), "CW_CLUSTER": "default"}
    env.update({"CW_CLUSTER": "other"} if what == "another cluster" else {"CW_HOME": str(tmp_path / "other")})
    proc = subprocess.Popen([sys.executable, "-m", "cw.worker", "127.0.0.1", "--port", "1", "--insecure"],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: psutil.Process(proc.pid).cmdline()[1:3] == ["-m", "cw.worker"], what="the worker")
    return proc


@pytest.mark.parametrize("what", ["unrelated", "another cluster", "another CW_HOME"])
def test_local_stop_signals_no_process_a_pid_record_wrongly_names(cw_home, tmp_path, sleeper, what):
    proc = sleeper if what == "unrelated" else _worker_elsewhere(cw_home, tmp_path, what)
    try:
        record = plant_record(cluster_dir(create=True), proc)
        done = cw("local", "stop")
        assert done.returncode == 0, done.stderr
        assert f"pid {proc.pid} is no longer this cluster's worker; record removed" in done.stderr
        assert "stopped 0 process(es)" in done.stdout
        assert proc.poll() is None  # not signalled
        assert not record.exists()
    finally:
        if proc is not sleeper:
            proc.terminate()  # it stops its executors: nothing left behind
            proc.wait(30)


# -- bad input: one line naming the file or value ------------------------------------
@pytest.fixture
def immutable(cw_home):
    """A pid record that even root cannot delete (chattr +i)."""
    path = cluster_dir(create=True) / "pids" / "worker-4194305.json"
    path.write_text(json.dumps({"pid": 2 ** 22 + 1, "create_time": 1.0, "role": "worker"}))
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    yield path
    subprocess.run(["chattr", "-i", str(path)], check=True)


def test_local_stop_says_which_pid_record_it_cannot_remove(immutable):
    done = cw("local", "stop")
    one_line_error(done, f"Error: cannot remove the pid record {immutable}: Operation not permitted; ")


def test_a_cpu_limit_that_is_no_ascii_number_is_named():
    with pytest.raises(ClusterError, match=r"^lab.csv, line 2: cpu_limit '²' is not a number from 1 to"):
        parse_machines("lab1\nlab2,,,,²\n", "lab.csv")


@pytest.mark.parametrize("action", ["add", "remove"])
def test_keys_says_which_key_name_is_invalid(cw_home, tmp_path, action):
    keyfile = tmp_path / "client.key"
    keyfile.write_text("")
    args = ["keys", action, "../x"] + ([str(keyfile)] if action == "add" else [])
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 1
    assert done.output.startswith("Error: invalid key name '../x': use letters, digits")
    assert "e.g. alice" in done.output and done.output.count("\n") == 1
    assert not (cw_home / "default" / "keys" / "x.key").exists()
