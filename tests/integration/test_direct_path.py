"""The direct path (cw.direct): blobs and big results between a client and
executors of another host go straight, not through the master; where the
executors cannot reach the client, everything still arrives, through the
master, with a warning. Real master, workers and client processes."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, wait_for, wait_workers

from cw.launch import query_status

CLIENT = Path(__file__).with_name("direct_client.py")
NETNS = ROOT / "tests" / "netns.sh"
NET, BRIDGE, MACHINE, VETH = "10.199.79", "cwbr2", "cwdirect1", "cwdirv1"


def run_client(host: str, port: int, n: int) -> tuple[dict, str]:
    """The client as a stranger to the workers' host (no shared memory)."""
    done = subprocess.run([sys.executable, str(CLIENT), host, str(port), str(n)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CW_SHM": "0"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def master_counts(port: int, done: int) -> dict:
    return wait_for(lambda: (lambda c: c if c["done"] >= done else None)(
        query_status("127.0.0.1", port)["counts"]), what="every job counted")


@pytest.mark.timeout(300)
def test_across_hosts_blobs_and_big_results_skip_the_master(procs, monkeypatch):
    _, port = procs.master()
    monkeypatch.setenv("CW_SHM", "0")  # the workers share no memory with the client: another host
    for _ in range(2):
        procs.worker(port)
    wait_workers(port, 2)
    got, err = run_client("127.0.0.1", port, 200)
    assert got["ok"] and got["echo"], got
    direct = got["counts"]
    # the function's pickle (4 MB, to each executor that ran a job) and the echo's argument
    assert 2 <= direct["served"] <= 3 and direct["served_bytes"] >= (4 << 20) + (3 << 20)
    assert direct["received"] == 1 and direct["received_bytes"] == 3 << 20  # the echo's result
    assert direct["sealed"] >= 1  # the bytes took the sealed bulk channel (cw.seal), not CURVE
    counts = master_counts(port, 201)
    assert counts["blobs_routed"] == 0 and counts["blob_bytes"] == 0
    assert "direct path" not in err


@pytest.fixture
def machine():
    """A network namespace on a bridge: a "host" whose loopback is its own."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    script = f"source {NETNS}; bridge_up {BRIDGE} {NET} && machine_up {MACHINE} {VETH} {BRIDGE} {NET}.2"
    up = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    try:
        if up.returncode != 0:
            pytest.skip(f"cannot make a network namespace here: {up.stderr.strip()[-200:]}")
        yield MACHINE
    finally:
        subprocess.run(["bash", "-c", f"source {NETNS}; machine_down {MACHINE} {VETH}; "
                                      f"ip link del {BRIDGE} 2>/dev/null || true"], timeout=60)
    assert not Path("/run/netns", MACHINE).exists()


@pytest.mark.timeout(300)
def test_a_client_the_workers_cannot_reach_gets_everything_through_the_master(procs, machine):
    _, port = procs.master("--host", "0.0.0.0")
    worker = subprocess.Popen(["ip", "netns", "exec", machine, sys.executable, "-m", "cw.worker",
                               f"{NET}.1", "--port", str(port), "--procs", "1"], cwd=ROOT,
                              stdin=subprocess.DEVNULL, env={**os.environ, "CW_SHM": "0"})
    procs.popens.append(worker)
    wait_workers(port, 1)
    # Dialled over the bridge, the client offers that address: the namespace reaches it.
    got, err = run_client(f"{NET}.1", port, 100)
    assert got["ok"] and got["echo"] and got["counts"]["received"] == 1, got
    assert master_counts(port, 101)["blob_bytes"] == 0 and "direct path" not in err
    # Dialled over loopback, it offers 127.0.0.1: in the namespace, that is the namespace.
    got, err = run_client("127.0.0.1", port, 100)
    assert got["ok"] and got["echo"], got
    assert got["counts"]["served"] == got["counts"]["received"] == 0
    assert "could not reach this client's direct path" in err
    assert err.count("could not reach") == 1  # said once
    assert master_counts(port, 202)["blob_bytes"] >= (4 << 20) + (3 << 20)
