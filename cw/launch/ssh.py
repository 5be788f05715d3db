"""SSH launcher: a master here, workers on plain machines listed in a CSV file.

::

    cw ssh start lab.csv
      ├─ master (+ a local worker) on this machine, as the local launcher does
      ├─ per CSV row, in parallel:  ssh [user@]address  cd CWD; PYTHON -m cw.launch.remote start
      │     (cw.launch.remote spawns `python -m cw.worker MASTER --master-timeout T`, records
      │      its pid + create time on that machine; where the cluster dir is not shared, writes
      │      the workers' key pair, which can only serve, and the master's public key)
      └─ <cluster>/ssh.json: the machines, where their records are; used by stop and status
    cw ssh stop
      ├─ on every machine, in parallel: remote stop (its workers end; homes kept)
      └─ then, where the key was copied, once all were reached: remote stop again, which
         removes that private home (one home may serve several machines: none goes
         while any worker may run); machines to reach again stay in ssh.json

One machine failing (unreachable, key refused, no python there) is reported
and does not stop the others. Remote workers exit by themselves once their
master has been gone ``--master-timeout`` seconds, so a vanished head leaves
no orphans. The commands come from pure functions in ``sshcmd.py`` that
quote every value; ``remote.py`` is what runs on the machines.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..cluster import cluster_dir, cluster_name, read_json, read_master, write_json
from ..errors import ClusterError, MasterUnavailableError
from ..security import ensure_keys, ensure_worker_keys, insecure_default
from . import local, query_status, wait_until
from .remote import KEY_FILES, PRIVATE_ROOT
from .sshcmd import (
    NOT_STARTED,
    Machine,
    describe_failure,
    read_machines,
    remote_command,
    route_address,
    ssh_command,
    worker_args,
)


# -- running ssh ------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    """How to reach the machines; recorded in ssh.json for stop and status."""

    python: str = sys.executable
    cwd: str = field(default_factory=os.getcwd)
    ssh_options: Sequence[str] = ()
    connect_timeout: int = 10
    env: dict = field(default_factory=dict)


def call(machine: Machine, opts: Options, action: str, request: dict,
         timeout: float = 60.0) -> tuple[Optional[dict], Optional[str]]:
    """Run ``cw.launch.remote ACTION`` there: its answer, or what went wrong."""
    cmd = ssh_command(machine, remote_command(opts.python, opts.cwd, action, opts.env),
                      options=opts.ssh_options, connect_timeout=opts.connect_timeout)
    try:
        done = subprocess.run(cmd, input=json.dumps(request), capture_output=True, text=True,
                              timeout=opts.connect_timeout + timeout)
    except subprocess.TimeoutExpired:
        return None, f"no answer within {opts.connect_timeout + timeout:g} s (unreachable, or hung there)"
    except OSError as e:
        return None, f"cannot run ssh: {e} (install openssh-client)"
    if done.returncode != 0:
        return None, describe_failure(done.returncode, done.stderr, python=opts.python, cwd=opts.cwd)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), None
    except (ValueError, IndexError):
        return None, f"remote command failed: unexpected answer {done.stdout.strip()[-200:]!r}"


def each(items: list, func: Callable) -> list:
    """``func`` over every machine at once: one slow machine does not hold up the rest."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(items))) as pool:
        return list(pool.map(func, items))


# -- start, stop, status ---------------------------------------------------------------
def _state_path(name: str) -> Path:
    return cluster_dir(name) / "ssh.json"


def _private_home(cdir: Path) -> str:
    """Where a machine that does not share ``cdir`` keeps this cluster's keys."""
    digest = hashlib.sha256(str(cdir.absolute()).encode()).hexdigest()[:12]
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:40]
    return f"{PRIVATE_ROOT}/{host}-{digest}"


def _forwarded_env() -> dict:
    """The shared-filesystem model: workers import what the head imports."""
    return {k: os.environ[k] for k in ("PYTHONPATH",) if os.environ.get(k)}


def start(csv_path: str, *, cluster: Optional[str] = None, master_address: Optional[str] = None,
          port: Optional[int] = None, local_workers: bool = True, cpu_limit: Optional[int] = None,
          python: Optional[str] = None, ssh_options: Sequence[str] = (), connect_timeout: int = 10,
          master_timeout: float = 60.0, timeout: float = 60.0, insecure: Optional[bool] = None) -> dict:
    """Start a master here and a worker on every machine of the CSV file; report per machine."""
    from ..worker import cpus_available

    machines = read_machines(csv_path)
    name = cluster_name(cluster)
    if _state_path(name).exists():
        raise ClusterError(f"cluster {name!r} still has machines started over SSH ({_state_path(name)}); "
                           "run `cw ssh stop` first")
    insecure = insecure_default(insecure)
    host = master_address or route_address(machines[0].address, machines[0].port or 22)
    opts = Options(python=python or sys.executable, ssh_options=tuple(ssh_options),
                   connect_timeout=connect_timeout, env=_forwarded_env())
    procs = cpu_limit or cpus_available()
    info = local.start(1 if local_workers else 0, cluster=name, host=host, port=port, procs=procs,
                       timeout=timeout, insecure=insecure)
    cdir = cluster_dir(name)
    state: dict = {"cluster": name, "token": secrets.token_hex(8), "options": asdict(opts),
                   "homes": [str(cdir.parent.absolute()), _private_home(cdir)],
                   "machines": [asdict(m) for m in machines], "started": {}}
    try:
        _start_machines(state, machines, opts, info, master_timeout=master_timeout, insecure=insecure)
        _wait_registered(info, state, machines, opts, timeout, insecure)
        write_json(_state_path(name), state)
    except BaseException:
        stop(name)  # a failed start leaves nothing running
        raise
    return {"cluster": name, "host": info["host"], "port": info["port"],
            "local_workers": len(info["worker_pids"]), "local_executors": procs,
            "machines": [state["started"][m.label] for m in machines]}


def _start_machines(state: dict, machines: list[Machine], opts: Options, info: dict, *,
                    master_timeout: float, insecure: bool) -> None:
    """A worker on every machine at once; ``state["started"]`` says how each went."""
    name = state["cluster"]
    cdir = cluster_dir(name)
    # Recorded before any machine is touched: a stop can always clean up.
    write_json(_state_path(name), state)
    (cdir / "ssh").mkdir(mode=0o700, exist_ok=True)
    (cdir / "ssh" / "probe").write_text(state["token"])
    request = {"cluster": name, "token": state["token"], "head_home": state["homes"][0],
               "private_home": state["homes"][1], "probe": str(cdir / "ssh" / "probe"),
               "keys": None if insecure else _key_texts(cdir)}

    def start_one(m: Machine) -> dict:
        args = worker_args(info["host"], info["port"], name, m, master_timeout=master_timeout,
                           insecure=insecure)
        answer, error = call(m, opts, "start", {**request, "mid": m.mid, "worker": args})
        return {"machine": m.label, **(answer or {}), "error": error,
                "spawned": answer is not None or _maybe_spawned(error)}

    state["started"] = {r["machine"]: r for r in each(machines, start_one)}
    write_json(_state_path(name), state)


def _key_texts(cdir: Path) -> dict:
    """The files a worker needs where it does not see the cluster directory:
    the workers' key pair (it can only serve) and the master's public key."""
    kdir = ensure_keys(cdir)
    ensure_worker_keys(kdir)
    return {name: (kdir / name).read_text() for name in KEY_FILES}


def _maybe_spawned(error: Optional[str]) -> bool:
    """After which failures may a worker still have started there?"""
    return not (error or "").startswith(NOT_STARTED)


def _wait_registered(info: dict, state: dict, machines: list, opts: Options, timeout: float,
                     insecure: bool) -> None:
    """Wait for each started worker and its executors; explain the ones that never came."""
    started = [r for r in state["started"].values() if r.get("pid")]

    def check() -> Optional[dict]:
        try:
            snap = query_status(info["host"], info["port"], timeout=2, cluster=state["cluster"],
                                insecure=insecure)
        except MasterUnavailableError:
            return None
        ready = {(w["host"], w["pid"]): w for w in snap["workers"] if w["executors"] >= max(1, w["procs"])}
        for r in started:
            w = ready.get((r["hostname"], r["pid"]))
            if w:
                r["executors"] = w["executors"]
        return {} if all("executors" in r for r in started) else None

    if wait_until(check, timeout, poll=0.3) is not None:
        return
    by_label = {m.label: m for m in machines}
    for r in started:
        if "executors" not in r:
            m = by_label[r["machine"]]
            answer, _ = call(m, opts, "status", {**_query(state, m), "tail": True})
            tail = next((w["tail"] for w in (answer or {}).get("workers", []) if w["pid"] == r["pid"]), "")
            r["error"] = (f"worker pid {r['pid']} did not register with the master at "
                          f"{info['host']}:{info['port']} within {timeout:g} s; can that machine reach it "
                          f"(--master-address)? log there: {r['log']}"
                          + (f"; it ends: {tail}" if tail else ""))


def _query(state: dict, m: Machine) -> dict:
    return {"cluster": state["cluster"], "token": state["token"], "homes": state["homes"], "mid": m.mid}


def _load(name: str) -> tuple[Optional[dict], list[Machine], Options]:
    state = read_json(_state_path(name))
    if state is None:
        return None, [], Options()
    opts = Options(**{**state["options"], "ssh_options": tuple(state["options"]["ssh_options"])})
    return state, [Machine(**m) for m in state["machines"]], opts


def stop(cluster: Optional[str] = None, timeout: float = 60.0) -> dict:
    """End this cluster's workers on every machine, then its master and local workers."""
    name = cluster_name(cluster)
    state, machines, opts = _load(name)
    results: list[dict] = []
    again: set = set()  # machines a later `cw ssh stop` must reach
    if state is not None:
        results, again = _stop_machines(state, machines, opts, timeout)
    stopped_local = local.stop(name)
    if state is not None and again:
        state["machines"] = [asdict(m) for m in machines if m.label in again]
        write_json(_state_path(name), state)  # `cw ssh stop` again retries just these
    else:
        _state_path(name).unlink(missing_ok=True)
        (cluster_dir(name) / "ssh" / "probe").unlink(missing_ok=True)
        try:
            (cluster_dir(name) / "ssh").rmdir()
        except OSError:
            pass  # absent, or a machine's records are still in it
    return {"cluster": name, "local": stopped_local, "machines": results}


def _stop_machines(state: dict, machines: list[Machine], opts: Options,
                   timeout: float) -> tuple[list[dict], set]:
    """Each machine's report, and those to reach again. Two rounds: a
    machine's private home may be another's too (an NFS home), so none is
    removed while a worker anywhere may still write to it: first every
    machine's workers end, then the homes go where the key was copied (or
    where start did not say). A machine not reached in the first round
    holds the second back everywhere, for a later `cw ssh stop`."""
    targets = [m for m in machines if state["started"].get(m.label, {}).get("spawned", True)]

    def stop_one(m: Machine, **extra) -> dict:
        answer, error = call(m, opts, "stop", {**_query(state, m), "timeout": timeout, **extra},
                             timeout + 30)
        return {"machine": m.label, **(answer or {}), "error": error}

    results = each(targets, lambda m: stop_one(m, keep_homes=True))
    failed = {r["machine"] for r in results if r["error"]}
    homes = [m for m, r in zip(targets, results)
             if not r["error"] and state["started"].get(m.label, {}).get("shared") is not True]
    if failed:
        return results, failed | {m.label for m in homes}
    second = {r["machine"]: r for r in each(homes, stop_one)}
    for r in results:
        if r["machine"] in second:
            r["removed"], r["error"] = second[r["machine"]].get("removed", []), second[r["machine"]]["error"]
    return results, {r["machine"] for r in results if r["error"]}


def status(cluster: Optional[str] = None, insecure: Optional[bool] = None) -> dict:
    """Each machine's recorded workers (alive? registered?), and the master's view."""
    name = cluster_name(cluster)
    state, machines, opts = _load(name)
    if state is None:
        raise ClusterError(f"cluster {name!r} has no machines started over SSH; "
                           "start some with `cw ssh start CLUSTER.csv`")
    out: dict = {"cluster": name, "machines": []}
    info = read_master(name)
    snap: dict = {"workers": []}
    try:
        if info is None:
            raise ClusterError(f"cluster {name!r} has no running master")
        snap = out["master"] = query_status(info["host"], info["port"], timeout=5, cluster=name,
                                            insecure=insecure)
    except (MasterUnavailableError, ClusterError) as e:
        out["master_error"] = str(e)
    registered = {(w["host"], w["pid"]): w for w in snap["workers"]}

    def status_one(m: Machine) -> tuple[Optional[dict], Optional[str]]:
        started = state["started"].get(m.label, {})
        if not started.get("spawned", True):
            return None, f"not started: {started['error']}"  # no need to ask again
        return call(m, opts, "status", _query(state, m), 30)

    for m, (answer, error) in zip(machines, each(machines, status_one)):
        workers = []
        for w in (answer or {}).get("workers", []):
            peer = registered.pop((answer["hostname"], w["pid"]), None)
            workers.append({**w, "registered": peer is not None,
                            "executors": peer["executors"] if peer else 0})
        out["machines"].append({"machine": m.label, "error": error, "workers": workers})
    out["others"] = list(registered.values())  # the local worker(s), or workers started by hand
    return out


# -- reports, for the CLI --------------------------------------------------------------
def start_report(report: dict) -> tuple[list[str], int]:
    """Lines saying what ``start`` did on each machine, and how many machines failed."""
    local_part = (f"{report['local_workers']} local worker(s) with {report['local_executors']} "
                  f"executor(s)" if report["local_workers"] else "no local worker")
    lines = [f"cluster {report['cluster']}: master at {report['host']}:{report['port']}, {local_part}"]
    for m in report["machines"]:
        if m["error"]:
            lines.append(f"  {m['machine']:<24} SSH error: {m['error']}")
        else:
            where = "cluster directory shared" if m["shared"] else "workers' key copied"
            lines.append(f"  {m['machine']:<24} connected, worker pid {m['pid']} started with "
                         f"{m['executors']} executor(s) ({where})")
    return lines, sum(1 for m in report["machines"] if m["error"])


def stop_report(report: dict) -> tuple[list[str], list[str]]:
    """Lines saying what ``stop`` ended, and the machines it could not reach."""
    lines = []
    for m in report["machines"]:
        if m["error"]:
            lines.append(f"  {m['machine']:<24} SSH error: {m['error']}")
        else:
            lines.append(f"  {m['machine']:<24} stopped {m['stopped']} worker(s)"
                         + ("; removed the copied key" if m["removed"] else ""))
    lines.append(f"cluster {report['cluster']}: stopped {report['local']} local process(es)")
    return lines, [m["machine"] for m in report["machines"] if m["error"]]


def status_report(st: dict) -> list[str]:
    """Lines for ``cw ssh status``: the master, then each machine's workers."""
    snap = st.get("master")
    lines = [f"cluster {st['cluster']}: master up {snap['uptime']:.0f} s, queued {snap['queued']}, "
             f"running {snap['running']}" if snap else f"cluster {st['cluster']}: {st.get('master_error')}"]
    for m in st["machines"]:
        if m["error"]:
            lines.append(f"  {m['machine']:<24} SSH error: {m['error']}")
        for w in m["workers"]:
            state = (f"registered, {w['executors']} executor(s)" if w["registered"]
                     else "running, not registered" if w["alive"] else "exited")
            lines.append(f"  {m['machine']:<24} worker pid {w['pid']}: {state}")
        if not m["error"] and not m["workers"]:
            lines.append(f"  {m['machine']:<24} no worker")
    for w in st["others"]:
        lines.append(f"  {'local ' + str(w['host']):<24} worker pid {w['pid']}: "
                     f"registered, {w['executors']} executor(s)")
    return lines
