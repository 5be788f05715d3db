"""Fixtures that start real cw processes on 127.0.0.1 and always clean them up."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from beds import unavailable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/jobs.py for clients


def wait_for(check, timeout=20.0, interval=0.02, what="condition"):
    """Poll ``check`` until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def cw_home(tmp_path, monkeypatch):
    home = tmp_path / "cwhome"
    monkeypatch.setenv("CW_HOME", str(home))
    for var in ("CW_CLUSTER", "CW_PORT", "CW_MASTER_ADDRESS", "CW_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    # cw.start would pick SLURM while the SLURM test bed is up; these tests
    # are about local processes (tests/slurm sets its own).
    monkeypatch.setenv("CW_LAUNCHER", "local")
    return home


class Processes:
    """Starts cw processes and guarantees that none outlives the test."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.popens: list[subprocess.Popen] = []
        self.seen: dict[int, float] = {}  # every pid ever observed in our trees

    def spawn(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdin=subprocess.DEVNULL)
        self.popens.append(proc)
        self.observe()
        return proc

    def master(self, *extra: str, cluster: str = "default") -> tuple[subprocess.Popen, int]:
        proc = self.spawn("-m", "cw.master", "--host", "127.0.0.1", "--port", "0",
                          "--cluster", cluster, *extra)
        mjson = self.home / cluster / "master.json"

        def ready():
            assert proc.poll() is None, "master exited at start"
            try:
                info = json.loads(mjson.read_text())
            except (OSError, ValueError):
                return None
            return info if info.get("pid") == proc.pid else None

        info = wait_for(ready, what="master.json")
        return proc, info["port"]

    def worker(self, port: int, *extra: str, procs: int = 1) -> subprocess.Popen:
        return self.spawn("-m", "cw.worker", "127.0.0.1", "--port", str(port),
                          "--procs", str(procs), *extra)

    def observe(self) -> None:
        for popen in self.popens:
            try:
                proc = psutil.Process(popen.pid)
                for p in [proc, *proc.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass

    def cleanup(self) -> list[int]:
        """Kill every tree we started; return pids that were still alive."""
        self.observe()
        procs = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                if abs(p.create_time() - created) < 0.01:
                    procs.append(p)
            except psutil.Error:
                pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        for popen in self.popens:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        from cw import shm

        if shm.host_key() is not None:  # what killed executors claimed: no exit of theirs removed it
            shm.sweep(shm._cached[1])
        return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def procs(cw_home):
    ps = Processes(cw_home)
    yield ps
    ps.cleanup()


@pytest.fixture
def cluster(procs):
    """A master and ``n`` single-executor workers; returns the master port."""
    def start(n: int = 2, *, worker_args: tuple = (), master_args: tuple = ()) -> int:
        _, port = procs.master(*master_args)
        for _ in range(n):
            procs.worker(port, *worker_args)
        if n:
            wait_workers(port, n)
        return port

    return start


def wait_workers(port: int, n: int, executors: int | None = None) -> dict:
    from cw.launch import query_status

    want = n if executors is None else executors
    return wait_for(
        lambda: (lambda s: s if len(s["workers"]) >= n and len(s["executors"]) >= want else None)(
            query_status("127.0.0.1", port)),
        what=f"{n} workers",
    )


def stop_gracefully(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


# -- the SLURM test bed: a real slurmctld and one slurmd per network namespace ----
SLURMBOX = Path(__file__).resolve().parent / "slurm" / "slurmbox.sh"


def _why_not() -> str | None:
    return unavailable("network namespaces, SLURM daemons",
                       ("slurmctld", "slurmd", "munged", "sbatch", "ip", "nsenter"),
                       "slurm-wlm munge iproute2")


@pytest.fixture(scope="session")
def slurmbox():
    reason = _why_not()
    if reason:
        pytest.skip(f"SLURM test bed unavailable: {reason}")
    up = subprocess.run([str(SLURMBOX), "up"], capture_output=True, text=True, timeout=120)
    if up.returncode != 0:
        subprocess.run([str(SLURMBOX), "down"], capture_output=True, timeout=120)
        pytest.fail(f"slurmbox up failed:\n{up.stdout}\n{up.stderr}")
    yield
    down = subprocess.run([str(SLURMBOX), "down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    left = [p.pid for p in psutil.process_iter(["name", "status"])
            if p.info["name"] in ("slurmd", "slurmctld") and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not left, f"slurmbox down left SLURM daemons running: {left}"


@pytest.fixture
def slurm_home(slurmbox, cw_home, monkeypatch):
    """A fresh CW_HOME on the shared filesystem, with SLURM picked by cw.start."""
    monkeypatch.delenv("CW_LAUNCHER")
    yield cw_home
    # Whatever a test left in the queue goes before the next one starts.
    subprocess.run(["scancel", "-u", "root"], capture_output=True, timeout=60)
