"""`cw ssh stop`'s two rounds: no private home goes while a worker anywhere may write to it."""
from cw.cluster import cluster_dir, read_json, write_json
from cw.launch import remote, ssh
from cw.launch.sshcmd import Machine

MACHINES = [Machine("10.0.0.1"), Machine("10.0.0.2"), Machine("10.0.0.3")]


def cluster(cw_home, tmp_path, monkeypatch):
    """Three machines started: the first two copied the key to one home they
    share, the third sees the cluster directory."""
    root = tmp_path / "ssh-homes"
    monkeypatch.setattr(remote, "PRIVATE_ROOT", str(root))
    home = root / "head-0123"
    remote._write_private(home, "default", "tok", {"master.key": "k"})
    one, two, three = MACHINES
    state = {"cluster": "default", "token": "tok", "homes": [str(cw_home), str(home)],
             "options": {"python": "python3", "cwd": "/", "ssh_options": [], "connect_timeout": 5,
                         "env": {}},
             "machines": [m.__dict__ for m in MACHINES],
             "started": {one.label: {"shared": False}, two.label: {"shared": False},
                         three.label: {"shared": True}}}
    write_json(cluster_dir("default", create=True) / "ssh.json", state)
    return root, home, MACHINES


def test_a_home_two_machines_share_goes_only_after_both_stopped(cw_home, tmp_path, monkeypatch):
    """Two machines without the cluster directory share one home (NFS): the
    first to stop must not remove it while the other's worker still runs
    and writes its log there (a race `tests/ssh` once lost)."""
    root, home, (one, two, three) = cluster(cw_home, tmp_path, monkeypatch)
    calls = []

    def call(machine, opts, action, request, timeout=60.0):
        assert action == "stop"
        if request.get("keep_homes"):  # a worker of this machine may still write to the home
            assert home.is_dir() and (home / remote.MARKER).exists()
        calls.append((machine.label, bool(request.get("keep_homes"))))
        return remote.stop(request), None

    monkeypatch.setattr(ssh, "call", call)
    report = ssh.stop("default")
    first, second = calls[:3], calls[3:]
    assert sorted(first) == sorted((m.label, True) for m in (one, two, three))
    assert sorted(second) == [(one.label, False), (two.label, False)]  # not the shared one
    assert not home.exists() and not root.exists()
    assert [m["error"] for m in report["machines"]] == [None, None, None]
    assert any(m["removed"] for m in report["machines"])
    lines, failed = ssh.stop_report(report)
    assert failed == [] and sum("removed the copied key" in line for line in lines) >= 1


def test_a_machine_not_reached_holds_the_homes_back_for_a_later_stop(cw_home, tmp_path, monkeypatch):
    """The unreached machine's worker may still write in the home it shares:
    no home goes, and ssh.json keeps it and the machines whose key stays."""
    root, home, (one, two, three) = cluster(cw_home, tmp_path, monkeypatch)
    down = {two.label}

    def call(machine, opts, action, request, timeout=60.0):
        if machine.label in down:
            return None, "unreachable: no route to host"
        return remote.stop(request), None

    monkeypatch.setattr(ssh, "call", call)
    report = ssh.stop("default")
    assert home.is_dir() and not any(m.get("removed") for m in report["machines"])
    kept = read_json(cluster_dir("default") / "ssh.json")
    assert sorted(m["address"] for m in kept["machines"]) == [one.address, two.address]
    down.clear()  # the machine is back: the next stop finishes the job
    report = ssh.stop("default")
    assert not home.exists() and [m["error"] for m in report["machines"]] == [None, None]
    assert read_json(cluster_dir("default") / "ssh.json") is None


def test_an_error_in_the_second_round_keeps_the_machine_for_a_later_stop(cw_home, tmp_path,
                                                                       monkeypatch):
    root, home, (one, two, three) = cluster(cw_home, tmp_path, monkeypatch)

    def call(machine, opts, action, request, timeout=60.0):
        if not request.get("keep_homes"):
            return None, "unreachable: connection reset"
        return remote.stop(request), None

    monkeypatch.setattr(ssh, "call", call)
    report = ssh.stop("default")
    errors = {m["machine"]: m["error"] for m in report["machines"]}
    assert errors == {one.label: "unreachable: connection reset", two.label: "unreachable: connection reset",
                      three.label: None}
    kept = read_json(cluster_dir("default") / "ssh.json")
    assert sorted(m["address"] for m in kept["machines"]) == [one.address, two.address]
    assert home.is_dir()


def test_a_machine_whose_start_said_nothing_has_its_home_removed(cw_home, tmp_path, monkeypatch):
    """Start interrupted, or its answer lost: whether the key was copied is
    unknown, so the second round asks (the marker guards what is removed)."""
    root, home, _ = cluster(cw_home, tmp_path, monkeypatch)
    state = read_json(cluster_dir("default") / "ssh.json")
    state["started"] = {}
    write_json(cluster_dir("default") / "ssh.json", state)
    monkeypatch.setattr(ssh, "call", lambda machine, opts, action, request, timeout=60.0:
                        (remote.stop(request), None))
    ssh.stop("default")
    assert not home.exists()
