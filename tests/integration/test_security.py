"""CURVE on by default: who gets in, who does not, and what each side is told."""
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import jobs
import pytest
import zmq
from conftest import ROOT, stop_gracefully, wait_for, wait_workers

from cw import JobRejectedError, SecurityError, direct
from cw.client import ClusterExecutor
from cw.cluster import cluster_dir
from cw.errors import ClusterError, ProtocolError
from cw.launch import query_status
from cw.launch.remote import _write_private
from cw.launch.ssh import _key_texts
from cw.protocol import MAGIC, PROTOCOL_VERSION, Kind, Message, versions
from cw.security import Keys, apply_client, client_keys, ensure_keys, load_public, worker_keys
from cw.serialize import context_frame, dumps_call


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_master_creates_private_cluster_directory_and_keys(procs, cw_home):
    procs.master()
    cdir = cw_home / "default"
    assert mode(cdir) == 0o700 and mode(cdir / "keys") == 0o700
    for name in ("master", "client"):
        assert mode(cdir / "keys" / f"{name}.key_secret") == 0o600
        assert (cdir / "keys" / f"{name}.key").exists()
    assert [p.name for p in (cdir / "keys" / "authorized").iterdir()] == ["owner.key"]
    # The workers' pair, admitted as a worker's (it can only serve), not listed as a client's.
    wdir = cdir / "keys" / "worker"
    assert mode(wdir) == 0o700 and mode(wdir / "worker.key_secret") == 0o600


def test_world_readable_secret_key_is_refused_with_the_fix(procs, cw_home):
    _, port = procs.master()
    secret = cw_home / "default" / "keys" / "client.key_secret"
    os.chmod(secret, 0o644)
    with pytest.raises(SecurityError, match=f"chmod 600 {secret}"):
        ClusterExecutor("127.0.0.1", port, connect_timeout=5)
    master_secret = cw_home / "default" / "keys" / "master.key_secret"
    os.chmod(master_secret, 0o640)
    done = subprocess.run([sys.executable, "-m", "cw.master", "--port", "0"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1 and "readable by others" in done.stderr
    assert "Traceback" not in done.stderr


def intruder_keys(kind, home):
    """Keys of a peer that must not get in."""
    if kind == "none":
        return None
    real = client_keys(cluster_dir())
    if kind == "random":
        pub, sec = zmq.curve_keypair()
        return Keys(pub, sec, real.server)
    other = client_keys(ensure_keys(home / "elsewhere" / "other").parent)
    if kind == "other-cluster":
        return other
    return Keys(other.public, other.secret, real.server)  # other cluster's key, right master


@pytest.mark.parametrize("kind", ["none", "random", "other-cluster", "other-cluster-key"])
def test_unauthenticated_peer_gets_no_answer_and_runs_nothing(cluster, cw_home, tmp_path, kind):
    port = cluster(1)
    sentinel = tmp_path / "ran.txt"
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    apply_client(sock, intruder_keys(kind, tmp_path))
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        hello = {"session": "x", "host": "evil", "pid": 1, **versions()}
        sock.send_multipart(Message(Kind.HELLO, hello).to_frames())
        payload = (context_frame(), *dumps_call(jobs.touch, (str(sentinel),), {}))
        for jid in range(1, 4):
            sock.send_multipart(Message(Kind.SUBMIT, {"ids": [jid]}, payload).to_frames())
        sock.send_multipart(Message(Kind.STATUS).to_frames())
        assert sock.poll(1500) == 0  # no answer at all
    finally:
        sock.close()
    snap = query_status("127.0.0.1", port)
    assert snap["counts"]["submitted"] == 0 and snap["clients"] == []
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(jobs.square, 12).result(30) == 144
    assert not sentinel.exists()


def test_secure_client_meets_insecure_master_with_a_clear_error(procs):
    _, port = procs.master("--insecure")
    start = time.monotonic()
    with pytest.raises(SecurityError, match="does not speak CurveZMQ") as refused:
        ClusterExecutor("127.0.0.1", port, connect_timeout=20)
    assert "both ends" not in str(refused.value)  # never advice to turn CURVE off
    assert time.monotonic() - start < 10  # told at once, not at the timeout
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10, insecure=True):
        pass


def test_insecure_client_meets_secure_master_with_a_clear_error(procs, monkeypatch):
    _, port = procs.master()
    monkeypatch.setenv("CW_INSECURE", "1")
    with pytest.raises(SecurityError, match="requires CURVE"):
        ClusterExecutor("127.0.0.1", port, connect_timeout=20)


def test_worker_with_the_wrong_security_exits_with_a_message(procs):
    _, port = procs.master("--insecure")
    done = subprocess.run([sys.executable, "-m", "cw.worker", "127.0.0.1", "--port", str(port)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "does not speak CurveZMQ" in done.stderr


def test_insecure_master_warns_loudly(procs, cw_home):
    proc = subprocess.Popen([sys.executable, "-m", "cw.master", "--port", "0", "--insecure"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stderr.readline()
        assert "CURVE is OFF" in line
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def cw_cli(*args, home):
    return subprocess.run([sys.executable, "-m", "cw.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "CW_HOME": str(home)})


def test_keys_add_admits_a_colleague_and_remove_shuts_them_out(cluster, cw_home, tmp_path, monkeypatch):
    port = cluster(1)
    colleague_home = tmp_path / "colleague"
    ckeys = ensure_keys(colleague_home / "default")
    shutil.copy(cw_home / "default" / "keys" / "master.key", ckeys / "master.key")
    monkeypatch.setenv("CW_HOME", str(colleague_home))
    with pytest.raises(SecurityError, match="refused this peer's key"):
        ClusterExecutor("127.0.0.1", port, connect_timeout=10)
    done = cw_cli("keys", "add", "colleague", str(ckeys / "client.key"), home=cw_home)
    assert done.returncode == 0, done.stderr
    listed = cw_cli("keys", "list", home=cw_home).stdout
    assert f"colleague\t{load_public(ckeys / 'client.key').decode()}" in listed
    assert "owner\t" in listed
    time.sleep(1.1)  # the master re-reads admitted keys at most once a second
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(jobs.square, 3).result(30) == 9
    assert cw_cli("keys", "remove", "colleague", home=cw_home).returncode == 0
    time.sleep(1.1)
    with pytest.raises(SecurityError, match="refused this peer's key"):
        ClusterExecutor("127.0.0.1", port, connect_timeout=10)
    bad = cw_cli("keys", "remove", "nobody", home=cw_home)
    assert bad.returncode == 1 and "admitted: owner" in bad.stderr


def test_protocol_mismatch_is_refused_naming_both_versions(cluster):
    port = cluster(0)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    apply_client(sock, client_keys(cluster_dir()))
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        hello = json.dumps({"session": "x", "host": "h", "pid": 1, **versions()}).encode()
        other = PROTOCOL_VERSION + 1
        sock.send_multipart([b"CW" + bytes([other]) + b"H" + hello])
        assert sock.poll(10_000)
        reply = Message.from_frames(sock.recv_multipart())
        assert reply.kind is Kind.ERROR
        assert f"protocol version {other} spoken by peer, {PROTOCOL_VERSION} here" in reply.header["error"]
        # A peer of protocol 3 or older sent magic, kind and header as three
        # frames: it is answered in that layout, which it can read.
        sock.send_multipart([b"CW\x03", b"H", hello])
        assert sock.poll(10_000)
        magic, kind, header = sock.recv_multipart()
        assert (magic, kind) == (MAGIC, Kind.ERROR.value)
        assert f"protocol version 3 spoken by peer, {PROTOCOL_VERSION} here" in json.loads(header)["error"]
    finally:
        sock.close()


@pytest.mark.parametrize("asker", ["client", "cw status"])
@pytest.mark.parametrize("version", [3, PROTOCOL_VERSION + 1])
def test_meeting_a_master_of_another_protocol_is_told_at_once(version, asker):
    """A master of protocol 3 refuses a one-frame message in its three-frame
    layout; a newer one in one frame. Either way the client (or ``cw
    status``) names both versions at once instead of waiting for its timeout."""
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    magic, kind = b"CW" + bytes([version]), Kind.ERROR.value
    refusal = b'{"error":"protocol version %d spoken by peer","code":"malformed"}' % PROTOCOL_VERSION
    reply = [magic, kind, refusal] if version <= 3 else [magic + kind + refusal]

    def other_master():
        if router.poll(30_000):
            identity = router.recv_multipart()[0]
            router.send_multipart([identity, *reply])

    thread = threading.Thread(target=other_master, daemon=True)
    thread.start()
    start = time.monotonic()
    try:
        if asker == "client":
            told = f"speaks cw protocol {version}, this client {PROTOCOL_VERSION}"
            with pytest.raises(ProtocolError, match=told):
                ClusterExecutor("127.0.0.1", port, connect_timeout=60, insecure=True)
        else:
            told = f"speaks cw protocol {version}, this cw {PROTOCOL_VERSION}"
            with pytest.raises(ClusterError, match=told):
                query_status("127.0.0.1", port, timeout=60, insecure=True)
        assert time.monotonic() - start < 30  # told at once, not at the timeout
    finally:
        thread.join(35)
        router.close()


def test_per_client_job_limit_is_a_clear_error_not_silent_loss(procs):
    _, port = procs.master("--max-jobs-per-client", "5")
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        futs = [ex.submit(jobs.square, i) for i in range(8)]
        refused = [f for f in futs[5:]]
        for fut in refused:
            with pytest.raises(JobRejectedError, match="--max-jobs-per-client"):
                fut.result(30)
        procs.worker(port)
        assert [f.result(30) for f in futs[:5]] == [0, 1, 4, 9, 16]
        assert ex.submit(jobs.square, 9).result(30) == 81  # room again


def test_message_size_limit_refuses_at_submit(procs):
    _, port = procs.master("--max-message-size", "20000", "--max-bytes-per-client", "30000")
    procs.worker(port)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        with pytest.raises(JobRejectedError, match="--max-message-size 20000"):
            ex.submit(jobs.square, b"x" * 50_000)
        blob = b"x" * 12_000
        first = ex.submit(jobs.sleep, 1.0, "slept")
        wait_for(first.running, what="first job")
        fut_a, fut_b, fut_c = (ex.submit(len, blob) for _ in range(3))
        assert fut_a.result(30) == 12_000
        outcomes = [fut_b, fut_c]
        errors = [f for f in outcomes if f.exception(30) is not None]
        assert errors and all(isinstance(f.exception(), JobRejectedError) for f in errors)
        assert "--max-bytes-per-client" in str(errors[0].exception())
        assert first.result(30) == "slept"


def test_cw_status_says_at_once_that_the_peer_speaks_no_curve(procs):
    """Not "no master answered" after its timeout: the handshake's refusal."""
    procs.master("--insecure")
    done = subprocess.run([sys.executable, "-m", "cw.cli", "status", "--timeout", "300"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "does not speak CurveZMQ" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "not a secure cw master" in done.stderr


def test_the_workers_key_serves_but_cannot_submit(cluster, tmp_path):
    """A worker's key (the one `cw ssh start` copies) can only serve: a client's
    messages from a peer holding it are refused, and nothing runs."""
    port = cluster(1)  # its worker holds the workers' key
    sentinel = tmp_path / "ran.txt"
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    apply_client(sock, worker_keys(cluster_dir()))
    sock.connect(f"tcp://127.0.0.1:{port}")
    try:
        hello = {"session": "x", "host": "h", "pid": 1, **versions()}
        sock.send_multipart(Message(Kind.HELLO, hello).to_frames())
        payload = (context_frame(), *dumps_call(jobs.touch, (str(sentinel),), {}))
        sock.send_multipart(Message(Kind.SUBMIT, {"ids": [1]}, payload).to_frames())
        sock.send_multipart(Message(Kind.CANCEL, {"id": 1}).to_frames())
        for kind in ("HELLO", "SUBMIT", "CANCEL"):
            assert sock.poll(10_000)
            reply = Message.from_frames(sock.recv_multipart())
            assert reply.kind is Kind.ERROR
            assert reply.header["error"] == (f"{kind} refused: this peer holds the workers' key, which "
                                             "serves jobs only; a client uses the cluster's client key")
        sock.send_multipart(Message(Kind.STATUS).to_frames())  # it may still ask how things are
        assert sock.poll(10_000) and Message.from_frames(sock.recv_multipart()).kind is Kind.STATUS
    finally:
        sock.close()
    snap = query_status("127.0.0.1", port)
    assert snap["counts"]["submitted"] == 0 and snap["clients"] == []
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(jobs.square, 12).result(30) == 144  # served by the worker's key
    assert not sentinel.exists()


def test_a_worker_with_only_the_workers_key_serves_jobs(procs, cw_home, tmp_path):
    """What `cw ssh start` writes on a machine that does not see the cluster
    directory: the workers' pair and the master's public key, nothing more.
    Its executors serve, and reach a client's direct path with that key."""
    _, port = procs.master()
    remote = tmp_path / "remote"
    _write_private(remote, "default", "token", _key_texts(cw_home / "default"))
    keys = remote / "default" / "keys"
    assert sorted(str(p.relative_to(keys)) for p in keys.rglob("*")) == [
        "master.key", "worker", "worker/worker.key", "worker/worker.key_secret"]
    # No shared memory with this client: a big result takes the direct path.
    env = {**os.environ, "CW_HOME": str(remote), "CW_SHM": "0"}
    worker = subprocess.Popen([sys.executable, "-m", "cw.worker", "127.0.0.1", "--port", str(port),
                               "--procs", "1"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    procs.popens.append(worker)
    procs.observe()
    wait_workers(port, 1)
    before = direct.counts["received"]
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(jobs.square, 7).result(30) == 49
        assert ex.submit(jobs.big_array, 2 << 20).result(60).sum() == 2 << 20
    assert direct.counts["received"] == before + 1  # its key admitted by the client's direct path
    assert stop_gracefully(worker) == 0
