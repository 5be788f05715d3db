"""Lanes (cw.lanes): which clients the master lends an executor's lane, when
it takes it back, and which lane directories an executor trusts."""
import os
import stat
import tempfile
from pathlib import Path

import pytest
from test_master import PEER, Peer, client, run, running_master, submit

from cw import blobs, lanes, shm, shmdir
from cw.protocol import Kind
from cw.worker import lane

LANE = f"ipc://{shm.root()}/lanes/lane-1" if shm.host_key() else "ipc:///none"


@pytest.fixture
def master():
    with running_master() as m:
        yield m


def supervisor(m):
    """A worker's supervisor, registered before any executor of its names it."""
    sup = Peer(m, b"s")
    sup.send(Kind.READY, {"capacity": 0, **PEER})
    for _ in range(500):
        if sup.sock.identity in m.supervisors:
            return sup
        m.step(timeout=0.01)
    raise AssertionError("the supervisor never registered")


def lane_executor(m, key="host-a", capacity=1, supervisor=None):
    ex = Peer(m, b"e")
    ex.send(Kind.READY, {"capacity": capacity, "supervisor": supervisor.sock.identity.hex()
                         if supervisor else "", "lane": LANE, "shm": key, **PEER})
    return ex


def lane_client(m, key="host-a"):
    c = Peer(m, b"c")
    c.send(Kind.HELLO, {"session": "s", "shm": key, **PEER})
    assert c.recv().kind is Kind.WELCOME
    return c


def lent(m, supervised=False):
    """A lane executor (under a supervisor, if ``supervised``) lent to a
    client that submitted job 1: ``(supervisor, executor, client)``."""
    sup = supervisor(m) if supervised else None
    ex = lane_executor(m, supervisor=sup)
    c = lane_client(m)
    submit(c, 1)
    assert "lane" in c.recv({Kind.LEASE}).header
    return sup, ex, c


def test_a_lone_job_lends_its_client_a_lane_of_its_host(master):
    ex = lane_executor(master)
    c = lane_client(master)
    submit(c, 1)
    lease = c.recv({Kind.LEASE})
    assert lease.header == {"lane": LANE, "worker": "test:1"}
    assert ex.recv({Kind.TASK}).header["id"]  # the job itself still goes through the master
    other = lane_client(master, key="host-b")  # another host: no lane of ours reaches it
    submit(other, 1)
    assert other.nothing({Kind.LEASE})
    late = lane_client(master)  # one lane, lent to one client at a time
    submit(late, 1)
    assert late.nothing({Kind.LEASE})


def test_a_client_without_a_host_key_or_with_jobs_in_flight_gets_no_lane(master):
    lane_executor(master)
    plain = client(master)  # no shm key: it cannot reach an ipc:// socket of ours
    submit(plain, 1)
    assert plain.nothing({Kind.LEASE})
    busy = lane_client(master)
    busy.send(Kind.SUBMIT, {"ids": [1, 2]}, b"ctx", b"call1", b"call2")
    assert busy.nothing({Kind.LEASE})


def test_jobs_queueing_up_take_the_lane_back(master):
    _, ex, c = lent(master)
    ex.recv({Kind.TASK})  # the one executor is busy now
    other = client(master)
    for jid in (1, 2, 3):
        submit(other, jid)
    back = c.recv({Kind.LEASE})
    assert back.header == {}
    assert master.leases.held == {}


def test_draining_or_killed_executors_leave_the_shelf(master):
    sup, _, c = lent(master, supervised=True)
    sup.send(Kind.DRAIN)
    assert c.recv({Kind.LEASE}).header == {}
    assert master.leases.shelf.get("host-a", {}) == {} and master.leases.held == {}


def test_lane_jobs_count_in_the_totals(master):
    sup = supervisor(master)
    ex = lane_executor(master, supervisor=sup)
    ex.send(Kind.HEARTBEAT, {"lane": 3, "lane_failed": 1})
    ex.send(Kind.HEARTBEAT, {"lane": -5})  # nonsense counts nothing
    ex.nothing({Kind.ERROR})
    assert (master.counts["laned"], master.counts["done"], master.counts["submitted"]) == (3, 3, 3)
    snap = master.snapshot()
    assert snap["totals"]["failed"] == 1 and snap["workers"][0]["failed"] == 1


def test_force_cancel_of_a_lane_job_kills_only_that_lane_executor(master):
    sup, _, c = lent(master, supervised=True)
    c.send(Kind.CANCEL, {"id": 7, "force": True, "lane": "elsewhere:9"})  # no lane it was lent
    assert sup.nothing({Kind.KILL})
    c.send(Kind.CANCEL, {"id": 7, "lane": "test:1"})  # not forced: a lane job cannot stop
    assert sup.nothing({Kind.KILL})
    stranger = lane_client(master)  # never lent it: may not kill it
    stranger.send(Kind.CANCEL, {"id": 7, "force": True, "lane": "test:1"})
    assert sup.nothing({Kind.KILL})
    c.send(Kind.CANCEL, {"id": 7, "force": True, "lane": "test:1"})
    assert sup.recv({Kind.KILL}) and master.counts["killed"] == 1
    assert c.recv({Kind.LEASE}).header == {}  # a killed executor's lane is no one's


def test_another_clients_job_on_a_lent_executor_takes_the_lane_back(master):
    _, ex, c = lent(master)
    run(ex)
    c.recv({Kind.RESULT})
    other = client(master)
    submit(other, 1)  # the lent executor is free to the master: it takes this one
    ex.recv({Kind.TASK})
    assert c.recv({Kind.LEASE}).header == {}  # the lane's jobs would wait behind it


def test_a_timed_job_behind_a_lane_job_does_not_time_out(master):
    sup = supervisor(master)
    ex = lane_executor(master, supervisor=sup)
    key = ex.sock.identity.hex()
    sup.send(Kind.HEARTBEAT, {"stats": {key: {"cpu": 100.0, "rss": 1 << 20, "lane": 1}}})
    other = client(master)
    other.send(Kind.SUBMIT, {"ids": [1], "timeout": 0.05}, b"ctx", b"call1")
    ex.recv({Kind.TASK})
    assert other.nothing({Kind.RESULT}) and sup.nothing({Kind.KILL})  # 0.1 s and more: not started
    sup.send(Kind.HEARTBEAT, {"stats": {key: {"cpu": 100.0, "rss": 1 << 20}}})  # the lane's job ended
    res = other.recv({Kind.RESULT}).header
    assert (res["id"], res["status"]) == (1, "timeout") and sup.recv({Kind.KILL})


def test_a_lane_lent_to_another_since_is_not_killed_for_the_first(master):
    sup, ex, first = lent(master, supervised=True)
    run(ex)
    first.recv({Kind.RESULT})
    first.send(Kind.BYE)  # gone: its loan ends
    second = lane_client(master)
    submit(second, 1)
    assert "lane" in second.recv({Kind.LEASE}).header
    first = lane_client(master)  # back, under a new session: it never held this lane
    first.send(Kind.CANCEL, {"id": 1, "force": True, "lane": "test:1"})
    assert sup.nothing({Kind.KILL})


@pytest.fixture
def private(monkeypatch, tmp_path):
    """A fresh CW_HOME and a /dev/shm stand-in (short: a socket path holds 108
    bytes); cw.shm and cw.shmdir find their private directory anew there."""
    if shm.host_key() is None:
        pytest.skip("no shared memory here")
    with tempfile.TemporaryDirectory(prefix="cw-", dir="/tmp") as root:
        monkeypatch.setattr(shmdir, "ROOT", root)
        monkeypatch.setattr(shmdir, "_found", {})
        for name, value in (("_cached", None), ("_checked", None), ("_why", "")):
            monkeypatch.setattr(shm, name, value)
        monkeypatch.setenv("CW_HOME", str(tmp_path / "home"))
        yield Path(root)


def test_a_lane_binds_only_in_a_directory_of_this_user_alone(private, monkeypatch):
    # The names another user could take first are no longer cw's.
    for squatted in (f"cw-lanes-{os.getuid()}", f"cw-blobs-{os.getuid()}", f"cw-{os.getuid()}"):
        (private / squatted).mkdir(mode=0o755)
        if os.geteuid() == 0:
            os.chown(private / squatted, 65534, 65534)
    assert shm.host_key() is not None
    root = Path(shm.root())
    assert root.parent == private and root.name.startswith(f"cw-{os.getuid()}-")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    directory = root / "lanes"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)  # others may enter: a socket there is not ours alone
    sock, why = lane.bind()
    assert sock is None and why.endswith("has mode 0o755, not 0700") and root.name not in why
    directory.chmod(0o700)
    sock, address = lane.bind()
    try:
        name = f"lane-{shm.pid_namespace()}-{os.getpid()}"  # pids of one namespace only
        assert address == f"ipc://{directory}/{name}"
        assert lanes.valid_address(address)
        assert (directory / name).exists()
    finally:
        sock.close()
        lanes.remove(os.getpid())
    monkeypatch.setenv("CW_LANES", "0")
    assert lane.bind() == (None, "CW_LANES=0 in the worker's environment")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a directory another user's")
def test_a_private_directory_taken_by_another_user_is_refused_and_said(private):
    assert shm.host_key() is not None
    root = Path(shm.root())
    os.chown(root, 65534, 65534)  # had another user guessed its name (or had it leaked)
    try:
        shmdir._found.clear()  # a process that starts now
        shm._checked = None
        assert shm.host_key() is None
        sock, why = lane.bind()
        assert sock is None
        assert why == (f"no shared memory: {private}/cw-{os.getuid()}-<secret> is owned by uid 65534, "
                       f"not {os.getuid()}")
        assert shm.off_reason() in why and blobs.host_directory() is None
    finally:
        os.chown(root, os.getuid(), os.getgid())


def test_the_secret_is_private_and_made_once(private):
    home = Path(os.environ["CW_HOME"])
    first, _ = shmdir.directory()
    secret = home / shmdir.SECRET
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and first is not None
    shmdir._found.clear()
    assert shmdir.directory() == (first, "") and shmdir.path_for(home) == first
    secret.chmod(0o644)  # others can read it: it names nothing
    shmdir._found.clear()
    path, why = shmdir.directory()
    assert path is None and why == f"{secret} is not a file of this user's alone (mode 0600); " \
                                   "remove it, cw makes a new one"


def test_a_client_takes_only_lanes_in_its_own_directory(private):
    assert shm.host_key() is not None
    uid, root = os.getuid(), shm.root()
    assert lanes.valid_address(f"ipc://{root}/lanes/lane-42")
    for bad in (f"ipc://{private}/cw-lanes-{uid}/lane-42",
                f"ipc://{private}/cw-{uid}-{'0' * 16}/lanes/lane-42", "tcp://10.0.0.1:5555",
                f"ipc://{root}/lanes/lane-1/../../x", "ipc:///tmp/lane-1"):
        assert not lanes.valid_address(bad), bad


def test_a_stale_socket_of_a_dead_executor_is_swept(tmp_path):
    dead = tmp_path / "lane-7-999999999"
    mine = tmp_path / f"lane-7-{os.getpid()}"
    elsewhere = tmp_path / "lane-8-999999999"  # another pid namespace: its pids are not ours to check
    for path in (dead, mine, elsewhere):
        path.touch()
    lanes.sweep(tmp_path, 7)
    assert not dead.exists() and mine.exists() and elsewhere.exists()

