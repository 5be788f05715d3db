"""Local launcher: master and workers as processes on this machine.

Every process it starts is recorded in ``<cluster>/pids/<role>-<pid>.json``
with its create time; ``stop`` ends exactly those processes and their
children (executors). Before it signals one, it checks with psutil that the
pid is still that process: the recorded create time, cw's command for its
role (``python -m cw.worker``) and this cluster in its environment
(``CW_CLUSTER``, ``CW_HOME``); a record that fails is removed, its pid left alone.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Optional

import psutil

from ..cluster import cluster_dir, cluster_name, env_port, home, pid_alive, read_json, read_master, write_json
from ..errors import ClusterError, MasterUnavailableError
from ..logfiles import LEVELS, log_path, logs_dir
from ..security import ensure_keys, insecure_default
from . import query_status, wait_for_workers, wait_until

log = logging.getLogger(__name__)


def _spawn(role: str, args: list, cluster: str) -> psutil.Process:
    cdir = cluster_dir(cluster, create=True)
    # Named after the process once it has a pid (cw logs PID): a fresh name till then.
    logfile = cdir / "logs" / f".{role}-{os.getpid()}-{secrets.token_hex(8)}.starting"
    # posix_spawn rather than Popen: the cluster outlives this process, so no
    # Popen object should linger to warn about a child still running. A new
    # session keeps a Ctrl-C in the starting shell from reaching the cluster.
    pid = os.posix_spawn(
        sys.executable, [sys.executable, "-m", f"cw.{role}", *args],
        {**os.environ, "CW_CLUSTER": cluster},
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(logfile),
             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    named = log_path(cdir / "logs", role, pid)
    os.rename(logfile, named)  # the process keeps writing to it: the same file
    proc = psutil.Process(pid)
    record = {"pid": pid, "create_time": proc.create_time(), "role": role, "log": str(named)}
    write_json(cdir / "pids" / f"{role}-{pid}.json", record)
    return proc


def _port(port: Optional[int]) -> int:
    """``port``, else ``$CW_PORT``, else 0: the master picks a free one and
    records it in ``master.json``, where clients find it (a fixed port
    may be another user's on a shared machine)."""
    if port is not None:
        return port
    env_port()  # a bad CW_PORT is a clear error, not a ValueError
    return int(os.environ.get("CW_PORT", "").strip() or 0)


def _running_master(name: str) -> dict:
    found = read_master(name)
    if found is None:
        raise ClusterError(f"no master running for cluster {name!r} (no master.json); start one, or drop -M")
    return found


def start(nworkers: int = 1, *, master: bool = True, workers: bool = True,
          cluster: Optional[str] = None, host: str = "127.0.0.1", port: Optional[int] = None,
          procs: int = 1, timeout: float = 60.0, insecure: Optional[bool] = None) -> dict:
    """Start a local cluster; return once the master answers and workers
    registered (``port``: ``$CW_PORT``, else 0, a free one)."""
    name = cluster_name(cluster)
    port = _port(port)
    _check(nworkers, procs)
    logs_dir(cluster_dir(name))  # CW_LOG_DIR refused here, not by each process it starts
    insecure = insecure_default(insecure)
    flags = ["--insecure"] if insecure else []
    started: list[psutil.Process] = []
    workers_started: list[psutil.Process] = []
    try:
        if master:
            if workers and nworkers:
                # Workers start beside the master rather than after it (they
                # wait for it): they need its port and keys beforehand.
                port = port or _free_port(host)
                if not insecure:
                    ensure_keys(cluster_dir(name, create=True))
                workers_started = _start_workers(name, _reachable(host), port, nworkers, procs, flags)
                started += workers_started
            info = _start_master(name, host, port, timeout, flags, started)
        else:
            info = _running_master(name)
        if workers and nworkers:
            if not workers_started:
                workers_started = _start_workers(name, info["host"], info["port"], nworkers, procs, flags)
                started += workers_started
            # Local workers register within a second: ask often (a STATUS is cheap).
            wait_for_workers(info["host"], info["port"], {p.pid for p in workers_started}, procs,
                             timeout, cluster=name, insecure=insecure, poll=0.05)
    except BaseException:
        _undo(name, started)  # a failed start leaves nothing running
        raise
    return {"cluster": name, "host": info["host"], "port": info["port"], "http": info.get("http"),
            "master_pid": info.get("pid"), "worker_pids": [p.pid for p in workers_started]}


def _check(nworkers: int, procs: int) -> None:
    if nworkers < 0 or procs < 1:
        raise ClusterError("need nworkers >= 0 and procs >= 1")
    level = os.environ.get("CW_LOG_LEVEL", "").strip()
    if level and level.lower() not in LEVELS:  # else each process it starts exits on it
        raise ClusterError(f"CW_LOG_LEVEL={level!r}: expected one of {', '.join(LEVELS)}")


def _start_workers(name: str, host: str, port: int, nworkers: int, procs: int,
                   flags: list) -> list[psutil.Process]:
    args = [host, "--port", str(port), "--procs", str(procs), *flags]
    return [_spawn("worker", args, name) for _ in range(nworkers)]


def _free_port(host: str) -> int:
    """A port free on ``host`` now (the master binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _reachable(host: str) -> str:
    """The address workers on this machine dial for a master bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "*", "") else "::1" if host == "::" else host


def _undo(name: str, procs: list) -> None:
    _terminate_trees(procs, 10)
    for proc in procs:
        for path in (cluster_dir(name) / "pids").glob(f"*-{proc.pid}.json"):
            path.unlink(missing_ok=True)
        _reap(proc.pid)


def _start_master(name: str, host: str, port: int, timeout: float, flags: list,
                  started: list) -> dict:
    running = read_master(name)
    if running is not None:
        raise ClusterError(
            f"cluster {name!r} already has a master (pid {running.get('pid')}, "
            f"{running['host']}:{running['port']}); stop it first or use -M"
        )
    proc = _spawn("master", ["--host", host, "--port", str(port), *flags], name)
    started.append(proc)
    mjson = cluster_dir(name) / "master.json"

    def ready() -> Optional[dict]:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            log = _log_of(name, proc.pid)
            raise ClusterError(f"the master exited at start{_reason(log)}; see {log}")
        info = read_json(mjson)
        return info if info and info.get("pid") == proc.pid else None

    info = wait_until(ready, timeout, poll=0.02)  # a file read: cheap to look often
    if info is None:
        raise ClusterError(f"the master did not start within {timeout:g} s; see {_log_of(name, proc.pid)}")
    try:
        query_status(info["host"], info["port"], timeout=timeout, cluster=name,
                     insecure=bool(flags))
    except MasterUnavailableError as e:
        raise ClusterError(f"{e}; see {_log_of(name, proc.pid)}") from e
    return info


def _reason(log: str) -> str:
    """The error a master that exited wrote last in its log, as ``: ...``."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("Error: ") or " ERROR " in line]
    return f": {errors[-1].split('Error: ', 1)[-1].split(' ERROR ', 1)[-1][:500]}" if errors else ""


def _log_of(name: str, pid: int) -> str:
    record = read_json(cluster_dir(name) / "pids" / f"master-{pid}.json") or {}
    return str(record.get("log", cluster_dir(name) / "logs"))


def _records(name: str) -> list[tuple[Path, dict]]:
    pids = cluster_dir(name) / "pids"
    out = []
    for path in sorted(pids.glob("*.json")) if pids.is_dir() else []:
        record = read_json(path)
        if record is None or not isinstance(record.get("pid"), int):
            _forget(path)
            continue
        out.append((path, record))
    # Workers first, so they leave while the master can still hear them.
    return sorted(out, key=lambda item: item[1].get("role") == "master")


def _forget(path: Path) -> None:
    """Remove a pid record, or say which one cannot be removed and why."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise ClusterError(f"cannot remove the pid record {path}: {e.strerror}; remove it yourself "
                           f"(check the permissions and attributes of it and {path.parent})") from e


def _still_ours(name: str, rec: dict) -> Optional[psutil.Process]:
    """The recorded process if it still is the one this cluster's launcher
    started: its create time, ``python -m cw.<role>``, this cluster and
    ``CW_HOME`` in its environment. A record anyone could have written
    (a pid reused, a planted file) must not make us signal another process."""
    pid, created = rec["pid"], rec.get("create_time")
    if not isinstance(created, (int, float)) or not pid_alive(pid, created):
        return None
    try:
        proc = psutil.Process(pid)
        cmd, env, cwd = proc.cmdline(), proc.environ(), proc.cwd()
    except psutil.Error:
        return None
    if cmd[1:3] != ["-m", f"cw.{rec.get('role')}"] or env.get("CW_CLUSTER") != name:
        return None
    its_home = Path(cwd, Path(env.get("CW_HOME") or "~/.cw").expanduser())
    return proc if its_home.resolve() == home().resolve() else None


def stop(cluster: Optional[str] = None, timeout: float = 30.0, *, master: bool = True,
         workers: bool = True) -> int:
    """Stop the processes this cluster's launcher started (its workers, its
    master, or both); return how many."""
    name = cluster_name(cluster)
    stopped = 0
    for role in [r for r, wanted in (("worker", workers), ("master", master)) if wanted]:
        group = [(path, rec) for path, rec in _records(name) if rec.get("role") == role]
        procs = []
        for path, rec in group:
            proc = _still_ours(name, rec)
            if proc is not None:
                procs.append(proc)
            elif psutil.pid_exists(rec["pid"]) and not _reap(rec["pid"]):
                log.warning("pid %d is no longer this cluster's %s; record removed", rec["pid"], role)
            _forget(path)
        stopped += len(procs)
        _terminate_trees(procs, timeout)
    master = read_json(cluster_dir(name) / "master.json")
    if master and not pid_alive(master.get("pid")):
        _forget(cluster_dir(name) / "master.json")
    return stopped


def _reap(pid: int) -> bool:
    """Collect a dead child of ours (a cluster started in this process); whether it was one."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


def _terminate_trees(procs: list, timeout: float) -> None:
    """SIGTERM each process, wait, then SIGKILL what is left of its tree."""
    tree = list(procs)
    for proc in procs:
        try:
            tree += proc.children(recursive=True)
        except psutil.Error:
            pass
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for proc in alive:
        try:
            log.warning("pid %d did not stop within %g s; killing it", proc.pid, timeout)
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def status(cluster: Optional[str] = None, insecure: Optional[bool] = None) -> dict:
    name = cluster_name(cluster)
    info = read_master(name)
    if info is None:
        raise ClusterError(f"cluster {name!r} has no running master")
    return query_status(info["host"], info["port"], cluster=name, insecure=insecure)
