"""The leak check of tests/conftest.py can fail: it names what a test left
(a cw process, a /dev/shm file, a lane socket), and it blames no test for
what another session left."""
import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import Leaks, _pid_namespace, wait_for

from cw import shm

pytest_plugins = ("pytester",)

TESTS = Path(__file__).resolve().parent.parent


def look_alike(home, **env):
    """A process whose command line is a cw worker's, run with ``home`` as its CW_HOME."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "cw.worker"],
                            env={**os.environ, "CW_HOME": str(home), **env}, stdin=subprocess.DEVNULL)


def shm_name(pid):
    assert shm.host_key() is not None
    return os.path.join(shm.root(), f"cw-{_pid_namespace()}-{pid}-{secrets.token_hex(16)}")


def lane_socket(pid):
    """A bound lane socket named after ``pid``, in this user's lane directory."""
    assert shm.host_key() is not None
    directory = Path(shm.root()) / "lanes"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"lane-{_pid_namespace()}-{pid}"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    return path


@pytest.fixture
def home(tmp_path):
    return tmp_path / "cwhome"


@pytest.fixture
def reaped():
    """Processes a test starts: killed and waited for, whatever happens."""
    started = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(10)


def test_nothing_left_is_nothing_reported(home):
    assert Leaks(home).check() == []


def test_a_cw_process_of_the_tests_home_is_reported_and_killed(home, tmp_path, reaped):
    leaks = Leaks(home, exit_grace=0.2)
    stray = look_alike(home)
    reaped.append(stray)
    other = look_alike(tmp_path / "someone-elses")  # another test's cluster: not this one's
    reaped.append(other)
    wait_for(lambda: psutil.Process(stray.pid).cmdline()[-1:] == ["cw.worker"], what="the look-alike to run")
    leaked = leaks.check()
    assert len(leaked) == 1 and f"pid {stray.pid}:" in leaked[0] and "-m cw.worker" in leaked[0]
    assert not psutil.pid_exists(stray.pid)  # killed (and reaped by the check)
    assert other.poll() is None


def test_a_shm_file_left_is_reported_and_removed(home):
    leaks = Leaks(home)
    path = shm_name(os.getpid())  # named after this process: a client's file never released
    Path(path).write_bytes(b"x")
    try:
        leaked = leaks.check()
        assert leaked == [f"shared-memory file left (named after pid {os.getpid()}): {path}"]
        assert not os.path.exists(path)
    finally:
        Path(path).unlink(missing_ok=True)


def test_a_lane_socket_of_an_ended_executor_is_reported_and_removed(home, reaped):
    leaks = Leaks(home)
    executor = look_alike(home, CW_LANES="1")
    reaped.append(executor)
    path = lane_socket(executor.pid)
    try:
        wait_for(lambda: executor.pid in leaks.ours, what="the watcher to see whose the socket is")
        executor.kill()
        executor.wait(10)
        leaked = leaks.check()
        assert leaked == [f"lane socket left by executor pid {executor.pid}, which ended: {path}"]
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_what_another_session_leaves_is_not_this_tests(home, tmp_path, reaped):
    leaks = Leaks(home)
    theirs = look_alike(tmp_path / "someone-elses")
    reaped.append(theirs)
    sock, file = lane_socket(theirs.pid), shm_name(theirs.pid)
    Path(file).write_bytes(b"x")
    try:
        wait_for(lambda: sock.name in str(leaks._looked_at), what="the watcher to look")
        theirs.kill()
        theirs.wait(10)
        # Nor does it remove them (not asserted: that session's next cw
        # process may sweep them any moment, as cw.shm and cw.lanes do).
        assert leaks.check() == []
    finally:
        sock.unlink(missing_ok=True)
        Path(file).unlink(missing_ok=True)


def test_the_fixtures_fail_the_test_that_leaked_at_teardown(pytester):
    """End to end: the fixture chain of tests/conftest.py, in a pytest of its own."""
    pytester.makeconftest(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(TESTS)!r})
        spec = importlib.util.spec_from_file_location("cw_fixtures", {str(TESTS / "conftest.py")!r})
        fixtures = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fixtures)
        leaks, cw_home, procs = fixtures.leaks, fixtures.cw_home, fixtures.procs
    """)
    pytester.makepyfile("""
        import os, secrets

        def test_clean(procs):
            pass

        def test_leaky(cw_home):
            from cw import shm
            assert shm.host_key() is not None
            ns = os.stat("/proc/self/ns/pid").st_ino
            path = os.path.join(shm.root(), f"cw-{ns}-{os.getpid()}-{secrets.token_hex(16)}")
            open(path, "w").close()
            print("LEFT", path)
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=2, errors=1)
    left = re.search(r"LEFT (\S+)", result.stdout.str()).group(1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_leaky*", "*the test leaked:*",
                                 f"*shared-memory file left (named after pid *): {left}"])
    assert not os.path.exists(left)
