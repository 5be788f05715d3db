"""`cw ssh stop`'s two rounds: no private home goes while a worker anywhere may write to it."""
from cw.cluster import cluster_dir, write_json
from cw.launch import remote, ssh
from cw.launch.sshcmd import Machine


def test_a_home_two_machines_share_goes_only_after_both_stopped(cw_home, tmp_path, monkeypatch):
    """Two machines without the cluster directory share one home (NFS): the
    first to stop must not remove it while the other's worker still runs
    and writes its log there (a race `tests/ssh` once lost)."""
    root = tmp_path / "ssh-homes"
    monkeypatch.setattr(remote, "PRIVATE_ROOT", str(root))
    home = root / "head-0123"
    remote._write_private(home, "default", "tok", {"master.key": "k"})
    one, two, three = Machine("10.0.0.1"), Machine("10.0.0.2"), Machine("10.0.0.3")
    state = {"cluster": "default", "token": "tok", "homes": [str(cw_home), str(home)],
             "options": {"python": "python3", "cwd": "/", "ssh_options": [], "connect_timeout": 5,
                         "env": {}},
             "machines": [m.__dict__ for m in (one, two, three)],
             "started": {one.label: {"shared": False}, two.label: {"shared": False},
                         three.label: {"shared": True}}}
    write_json(cluster_dir("default", create=True) / "ssh.json", state)
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
