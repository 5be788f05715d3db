"""What the cw image runs when given no command: the ``CW_*`` environment decides.

::

    CW_MASTER_ADDRESS unset    ──► master on CW_PORT + a worker with CW_WORKERS executors
      ... and CW_NO_WORKER=1   ──► the master alone
    CW_MASTER_ADDRESS=HOST     ──► a worker for the master at HOST (it connects out)

``plan(env)`` turns the environment into commands, or a ``ClusterError``
naming the settings that conflict, before anything starts. ``main`` runs
them with their output in ``$CW_LOG_DIR`` (``/var/log/cw`` in the image)
and, on SIGTERM/SIGINT, drains the worker before it stops the master, so a
``docker stop`` loses no job. The worker and the master handle their own
draining; this process only relays the signal and waits.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping, Optional

from ..cluster import cluster_dir, read_json
from ..errors import ClusterError, CWError
from ..logfiles import open_log

log = logging.getLogger("cw.entrypoint")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Plan:
    """What one container runs: a master, a worker, or both."""

    master: Optional[list[str]]
    worker: Optional[list[str]]  # without the master's address: known once it runs
    master_address: Optional[str] = None


def flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ClusterError(f"{name}={env[name]!r} is not a yes/no value; use 1 or 0")
    return value in _TRUE


def executors(env: Mapping[str, str]) -> str:
    """``CW_WORKERS``: executor processes of this container's worker, N or auto."""
    value = env.get("CW_WORKERS", "").strip().lower() or "1"
    if value != "auto" and not (value.isdigit() and int(value) >= 1):
        raise ClusterError(f"CW_WORKERS={env['CW_WORKERS']!r} is neither a number >= 1 nor 'auto'")
    return value


def plan(env: Mapping[str, str], python: str = sys.executable) -> Plan:
    """The commands for this environment; conflicting settings raise at once."""
    address = env.get("CW_MASTER_ADDRESS", "").strip()
    no_worker = flag(env, "CW_NO_WORKER")
    flag(env, "CW_INSECURE")  # the commands read it themselves; refuse a typo here
    port = _port(env)
    if address and no_worker:
        raise ClusterError(
            f"CW_MASTER_ADDRESS={address} runs only a worker, and CW_NO_WORKER=1 asks for no "
            "worker: nothing would run. Unset CW_NO_WORKER to run a worker for that master, "
            "or unset CW_MASTER_ADDRESS to run a master here")
    if no_worker and env.get("CW_WORKERS", "").strip():
        raise ClusterError(f"CW_WORKERS={env['CW_WORKERS']} asks for executors and CW_NO_WORKER=1 "
                           "for no worker; unset one of them")
    if address and port == 0:
        raise ClusterError("CW_PORT=0 lets a master pick its port; a worker needs the master's "
                           "port: set CW_PORT to it, or unset it to read master.json")
    worker = [python, "-m", "cw.worker", "--procs", executors(env)]
    if address:
        return Plan(master=None, worker=worker, master_address=address)
    master = [python, "-m", "cw.master", "--host", "0.0.0.0"]
    return Plan(master=master, worker=None if no_worker else worker)


def _port(env: Mapping[str, str]) -> Optional[int]:
    value = env.get("CW_PORT", "").strip()
    if not value:
        return None
    if not (value.isdigit() and int(value) < 65536):
        raise ClusterError(f"CW_PORT={value!r} is not a port number (0-65535)")
    return int(value)


class Entrypoint:
    """Runs a plan's processes; SIGTERM drains the worker, then stops the master."""

    def __init__(self, plan: Plan, log_dir: Path) -> None:
        self.plan = plan
        self.log_dir = log_dir
        self.stopping = False
        self.master: Optional[subprocess.Popen] = None
        self.worker: Optional[subprocess.Popen] = None

    def start(self) -> None:
        if self.plan.master is not None:
            self.master = self.spawn("master", self.plan.master)
        if self.plan.worker is not None:
            where = self.master_where()
            if where is not None:
                self.worker = self.spawn("worker", [*self.plan.worker, *where])

    def master_where(self) -> Optional[list[str]]:
        """The worker's HOST [--port P]: given, or this container's own master."""
        if self.plan.master_address:
            return [self.plan.master_address]
        assert self.master is not None
        mjson = cluster_dir() / "master.json"
        while not self.stopping and self.master.poll() is None:
            info = read_json(mjson)
            if info and info.get("pid") == self.master.pid:
                return ["127.0.0.1", "--port", str(info["port"])]
            time.sleep(0.1)
        return None

    def spawn(self, role: str, cmd: list[str]) -> subprocess.Popen:
        out = self.log_file(role)
        log.info("starting the %s: %s (log: %s)", role, " ".join(cmd),
                 getattr(out, "name", "stderr"))
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def log_file(self, role: str) -> IO[Any]:
        # Containers on the host network share a hostname and all are pid 1:
        # only the time and a random tag keep several in one log directory apart.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.log_dir / f"{role}-{socket.gethostname()}-{stamp}-{os.urandom(3).hex()}.log"
        try:
            self.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return open(open_log(path), "a")
        except OSError as e:
            log.warning("cannot write %s (%s); logging to stderr instead. Mount a directory "
                        "this container's user may write at %s", path, e.strerror, self.log_dir)
            return sys.stderr

    def run(self) -> int:
        """Wait until a process ends or a signal comes; then stop the rest."""
        self.start()
        while not self.stopping and all(p.poll() is None for p in self.running()):
            time.sleep(0.2)
        code = next((p.returncode for p in self.running() if p.poll() not in (None, 0)), 0)
        for role, proc in (("worker", self.worker), ("master", self.master)):
            if proc is not None and proc.poll() is None:
                log.info("stopping the %s (pid %d)", role, proc.pid)
                proc.terminate()
                proc.wait()
        log.info("stopped")
        return code

    def running(self) -> list[subprocess.Popen]:
        return [p for p in (self.master, self.worker) if p is not None]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="cw-entrypoint: %(message)s")
    try:
        what = plan(os.environ)
    except CWError as e:
        print(f"cw-entrypoint: {e}", file=sys.stderr)
        sys.exit(2)
    entry = Entrypoint(what, Path(os.environ.get("CW_LOG_DIR") or "/var/log/cw"))

    def on_signal(signum: int, frame: Any) -> None:
        entry.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.exit(entry.run())


if __name__ == "__main__":
    main()
