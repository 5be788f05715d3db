"""Fixtures that start real cw processes on 127.0.0.1 and always clean them up."""
from __future__ import annotations

import collections
import gc
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from beds import unavailable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/jobs.py for clients


class Collector:
    """A ClientThread callback that counts deliveries per job id."""

    def __init__(self):
        self.lock = threading.Lock()
        self.results = collections.defaultdict(list)

    def __call__(self, jobid, result):
        with self.lock:
            self.results[jobid].append(result)

    def count(self):
        with self.lock:
            return len(self.results)

    def exactly_once(self, expected):
        assert {k: len(v) for k, v in self.results.items()} == {k: 1 for k in expected}
        return {k: v[0] for k, v in self.results.items()}


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


# -- leaks: what a test left behind once the fixtures cleaned up -------------
# Every fixture that starts cw processes goes through ``cw_home``, which
# snapshots /dev/shm before the test and asks ``Leaks.check`` after every
# other fixture of the test tore down (``leaks`` is set up first, so torn
# down last). Whatever is found is removed, so one leak fails one test.
CW_MODULES = ("cw.master", "cw.worker", "cw.executor", "cw.cli")
EXIT_GRACE = 10.0  # seconds a process of the test's cluster may still take to exit


def _pid_namespace(pid: int | str = "self") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def is_cw_command(cmdline: list[str]) -> bool:
    """``python -m cw.<entry point> ...``, ``mp.py`` or the ``cw`` script."""
    script = Path(cmdline[1]).name if len(cmdline) > 1 else ""
    return script in ("mp.py", "cw") or any(a in CW_MODULES for a in cmdline)


def describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid}: {' '.join(p.cmdline())}"
    except psutil.Error:
        return f"pid {p.pid} (gone)"


def cw_processes(home: Path) -> list[psutil.Process]:
    """Live cw processes of this user and pid namespace whose environment
    names ``home`` as CW_HOME: a cluster of this test's, however it started
    (a launcher, cw.start, a job's own client)."""
    found = []
    ns, uid = _pid_namespace(), os.getuid()
    for p in psutil.process_iter(["cmdline", "uids", "status"]):
        try:
            if (p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE
                    or p.info["uids"].real != uid or not is_cw_command(p.info["cmdline"] or [])
                    or _pid_namespace(p.pid) != ns):  # a container's cw is its own
                continue
            if p.environ().get("CW_HOME") == str(home):
                found.append(p)
        except psutil.Error:
            pass
    return found


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    def running(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    return [p for p in procs if running(p)]


def private_dirs() -> list[Path]:
    """This user's private /dev/shm directories (cw.shmdir): one per CW_HOME."""
    from cw import shmdir

    name = re.compile(rf"cw-{os.getuid()}-[0-9a-f]{{16}}")
    try:
        entries = list(os.scandir(shmdir.ROOT))
    except OSError:
        return []
    out = []
    for e in entries:
        try:
            if name.fullmatch(e.name) and e.is_dir(follow_symlinks=False) \
                    and e.stat(follow_symlinks=False).st_uid == os.getuid():
                out.append(Path(e.path))
        except OSError:
            pass
    return out


def _scan(directory: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(directory))
    except OSError:
        return []


def shm_files() -> dict[str, int]:
    """cw's job and spare files, and the host's copies of blobs, of this
    user and pid namespace: name -> the pid it is named after (the process
    that must remove it)."""
    from cw import shm
    from cw.worker import hostcache

    ns, found = _pid_namespace(), {}
    for root in private_dirs():
        for e in _scan(root):
            m = shm._ANY.fullmatch(e.name)
            if m and int(m.group(1)) == ns:
                found[e.path] = int(m.group(2))
        for e in _scan(root / "blobs"):
            m = hostcache._NAME.fullmatch(e.name)
            if m and int(m.group(2)) == ns:
                found[e.path] = int(m.group(3))
    return found


def lane_sockets() -> dict[str, int]:
    """The lane sockets of executors of this pid namespace: path -> pid."""
    from cw import lanes

    ns, found = _pid_namespace(), {}
    for root in private_dirs():
        for e in _scan(root / "lanes"):
            m = lanes._SOCKET.fullmatch(e.name)
            if m and int(m.group(1)) == ns:
                found[e.path] = int(m.group(2))
    return found


def remove_private_dir(home: Path) -> None:
    """The private /dev/shm directory of a test's CW_HOME, once empty: each
    test has its own, and /dev/shm must not fill with them."""
    from cw import shmdir

    shmdir.remove_if_empty(home)


def uses_home(pid: int, home: Path) -> bool:
    try:
        return psutil.Process(pid).environ().get("CW_HOME") == str(home)
    except psutil.Error:
        return False


class Leaks:
    """Notes what exists before a test; ``check`` reports (and removes)
    what the test left: processes of its cluster alive after the fixtures'
    cleanup, cw files in /dev/shm, lane sockets of dead executors.

    Files and sockets are named after a pid, and other sessions of this
    user share /dev/shm: one is this test's if the process it names ran
    with this test's CW_HOME. A dead process's environment tells nothing,
    so a watcher thread looks at each new name while its process lives.
    """

    WATCH_EVERY = 0.05  # seconds; an executor that lives less goes unseen (a leak missed, none made up)

    def __init__(self, home: Path, exit_grace: float = EXIT_GRACE) -> None:
        self.home, self.exit_grace = home, exit_grace
        self.survivors: list[psutil.Process] = []  # what Processes.cleanup could not kill
        self.killed: set[int] = set()  # pids the fixtures (or the test, on purpose) killed
        self.ours: set[int] = {os.getpid()}  # pids of this test: the files named after them are its
        self.files = set(shm_files())
        self.sockets = set(lane_sockets())
        self._looked_at = self.files | self.sockets  # each name's process is looked at once
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="cw-leak-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.WATCH_EVERY):
            self.attribute()

    def attribute(self) -> None:
        """Note as ours the live processes new files and sockets are named after."""
        for path, pid in {**shm_files(), **lane_sockets()}.items():
            if path not in self._looked_at:
                self._looked_at.add(path)
                if uses_home(pid, self.home):
                    self.ours.add(pid)

    def check(self) -> list[str]:
        self._stop.set()
        self._watcher.join()
        self.attribute()
        leaked = [f"process survived the fixture's kill: {describe(p)}" for p in self.survivors]
        # A cluster the test left running (a launcher's, cw.start's), or
        # processes still going down: each gets EXIT_GRACE to exit by itself.
        reported = {p.pid for p in self.survivors}
        strays = [p for p in cw_processes(self.home) if p.pid not in reported]
        self.ours.update(p.pid for p in strays)
        _, still = psutil.wait_procs(strays, timeout=self.exit_grace)
        for p in still:
            leaked.append(f"cw process of this test's CW_HOME still running: {describe(p)}")
            try:
                p.kill()
            except psutil.Error:
                pass
            self.killed.add(p.pid)
        psutil.wait_procs(still, timeout=self.exit_grace)
        # This process's own spares are a cache of its client, kept on
        # purpose (cw.shm); results a test still held are freed by now.
        gc.collect()
        from cw import shm

        shm.drop_spares()
        for path, owner in shm_files().items():
            if path in self.files or owner not in self.ours:
                continue
            if owner not in self.killed:  # a process killed mid-flight cannot remove its files
                leaked.append(f"shared-memory file left (named after pid {owner}): {path}")
            _unlink(path)
        for path, pid in lane_sockets().items():
            if path in self.sockets or pid not in self.ours or psutil.pid_exists(pid):
                continue  # a live executor's: if ours, reported above
            if pid not in self.killed:
                leaked.append(f"lane socket left by executor pid {pid}, which ended: {path}")
            _unlink(path)
        remove_private_dir(self.home)
        return leaked


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@pytest.fixture(autouse=True)
def no_private_dirs_left(request):
    """Each CW_HOME a test made (under its tmp_path) has its private /dev/shm
    directory (cw.shmdir): removed once empty, whichever fixtures ran."""
    base = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if base is not None:
        for secret in [*base.glob(".shm-secret"), *base.glob("*/.shm-secret"), *base.glob("*/*/.shm-secret")]:
            remove_private_dir(secret.parent)


@pytest.fixture
def leaks(tmp_path):
    """Fails the test (an error at teardown) that left something behind."""
    check = Leaks(tmp_path / "cwhome")
    yield check
    leaked = check.check()
    if leaked:
        pytest.fail("the test leaked:\n  " + "\n  ".join(leaked), pytrace=False)


@pytest.fixture
def cw_home(leaks, monkeypatch):
    home = leaks.home
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
        self.killed: list[int] = []  # the pids cleanup, or the test on purpose, SIGKILLed

    def spawn(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdin=subprocess.DEVNULL)
        self.popens.append(proc)
        self.observe()
        return proc

    def master(self, *extra: str, cluster: str = "default") -> tuple[subprocess.Popen, int]:
        proc = self.spawn("-m", "cw.master", "--host", "127.0.0.1", "--port", "0",
                          "--cluster", cluster, *extra)
        return proc, master_json(proc, self.home / cluster / "master.json")["port"]

    def worker(self, port: int, *extra: str, procs: int = 1) -> subprocess.Popen:
        return self.spawn("-m", "cw.worker", "127.0.0.1", "--port", str(port),
                          "--procs", str(procs), *extra)

    def kill_tree(self, pid: int, sig: int = signal.SIGKILL) -> list[psutil.Process]:
        """Signal a process and its descendants; a SIGKILL is noted, since
        what it ends cannot remove its own files (see ``leaks``)."""
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for p in tree:
            p.send_signal(sig)
            if sig == signal.SIGKILL:
                self.killed.append(p.pid)
        return tree

    def observe(self) -> None:
        for popen in self.popens:
            try:
                proc = psutil.Process(popen.pid)
                for p in [proc, *proc.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                pass

    def cleanup(self) -> list[psutil.Process]:
        """Kill every tree we started; return what is still alive after."""
        self.observe()
        for popen in self.popens:  # ours until waited for: no other process can have its pid
            if popen.poll() is None:
                popen.kill()
                self.killed.append(popen.pid)
        procs = []
        for pid, created in self.seen.items():
            try:
                p = psutil.Process(pid)
                # (create times are computed from the boot time, which the kernel derives
                # from the wall clock: a clock step moves them by a second)
                if abs(p.create_time() - created) < 1.0:
                    procs.append(p)
            except psutil.Error:
                pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        self.killed += [p.pid for p in procs]
        psutil.wait_procs(procs, timeout=10)
        for popen in self.popens:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        return alive(procs)


@pytest.fixture
def procs(cw_home, leaks):
    ps = Processes(cw_home)
    yield ps
    leaks.survivors += ps.cleanup()
    # Files and lane sockets of what the kill ended are its own to remove
    # (leaks.check does); those of processes that ended otherwise are not.
    leaks.killed.update(ps.killed)
    leaks.ours.update(ps.seen)


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


def wait_workers(port: int, n: int, executors: int | None = None, spares: int = 0) -> dict:
    """The status once ``n`` workers, ``executors`` executors (default ``n``) and
    ``spares`` express spares (cw.master.scheduler) registered."""
    from cw.launch import query_status

    want = n if executors is None else executors
    return wait_for(
        lambda: (lambda s: s if len(s["workers"]) >= n and len(s["executors"]) >= want
                 and len(s["express"]) >= spares else None)(query_status("127.0.0.1", port)),
        what=f"{n} workers",
    )


def master_json(proc: subprocess.Popen, path: Path, what: str = "master.json") -> dict:
    """``path`` once the master ``proc`` wrote it (it records that master's
    pid); fails the test if that master exits first."""
    def ready():
        assert proc.poll() is None, "the master exited at start"
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == proc.pid else None

    return wait_for(ready, what=what)


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
