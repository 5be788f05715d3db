"""``cw doctor``: what a user gets wrong first, one line per finding; and
``cw status --why``: why queued jobs do not run.

Each check says what it found, ``ok``, a ``note`` (worth knowing, nothing
broken) or a ``PROBLEM`` (something that stops jobs, with the fix). The
checks, in order: ``$CW_HOME`` and the cluster directory (owner, mode); the
keys; on a SLURM cluster, whether ``$CW_HOME`` is on a shared filesystem
and the master's address reachable from other nodes; ``master.json`` and
whether the master answers; the Python and cloudpickle versions of each
worker against this client's; the direct path's ports; on SLURM, this
user's worker jobs waiting in the queue, and why.
"""
from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Callable, Optional

from ..cluster import cluster_dir, cluster_name, master_problem, read_json
from ..errors import CWError, MasterUnavailableError

OK, NOTE, PROBLEM = "ok", "note", "PROBLEM"
Finding = tuple[str, str]
# Filesystems every node of a cluster sees alike (as /proc/self/mountinfo names them).
SHARED = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "fuse.sshfs", "fuse.glusterfs",
          "glusterfs", "pvfs2", "orangefs", "fuse.beegfs", "9p", "virtiofs")


def doctor(cluster: Optional[str], query: Callable[..., dict], slurm: bool) -> list[Finding]:
    """Every finding about ``cluster``; ``query`` asks the master for its
    status (``cw.launch.query_status``); ``slurm``: SLURM is here. What only
    a cluster on SLURM needs (a shared filesystem, an address other nodes
    reach) is checked where its master runs as a SLURM job, or none runs."""
    found: list[Finding] = []
    try:
        cdir = cluster_dir(cluster)
    except CWError as e:
        return [(PROBLEM, str(e))]  # nothing else can be trusted
    if not cdir.is_dir():
        return [(PROBLEM, f"no cluster {cluster_name(cluster)!r}: {cdir} does not exist; start one "
                          "(`cw local start`, `./slurm.py start`) or name another (--cluster, CW_HOME)")]
    found.append((OK, f"cluster directory {cdir}: yours, 0700"))
    found += _keys(cdir)
    known = read_json(cdir / "master.json") or {}
    slurm = slurm and (not known or bool(known.get("slurm_job")))  # a local cluster needs neither
    if slurm:
        found.append(_shared(cdir))
    info, address = _master_json(cdir, cluster, found, slurm)
    if info is not None:
        try:
            snap = query(info["host"], info["port"], 5.0, cluster=cluster)
        except (MasterUnavailableError, CWError) as e:
            found.append((PROBLEM, f"the master at {address} does not answer: {e}"))
        else:
            found.append((OK, f"the master at {address} answers: pid {snap.get('pid')}, "
                              f"{len(snap['workers'])} worker(s), {len(snap['executors'])} executor(s)"))
            found += versions(snap["workers"])
    found.append(_direct_ports())
    return found


def _keys(cdir: Path) -> list[Finding]:
    from ..security import client_keys, worker_keys

    found = []
    for what, load in (("the client's keys", client_keys), ("the workers' keys", worker_keys)):
        try:
            load(cdir)
            found.append((OK, f"{what}: readable, private"))
        except (CWError, OSError, ValueError) as e:
            found.append((PROBLEM, f"{what}: {e}"))
    return found


def _shared(cdir: Path) -> Finding:
    """Whether every node sees the cluster directory: it must, on SLURM."""
    kind, mount = filesystem(cdir)
    if kind in SHARED or kind.startswith("fuse."):
        return OK, f"{cdir} is on {kind} ({mount}): other nodes see it"
    return (PROBLEM, f"{cdir} is on {kind} ({mount}), a filesystem of this machine alone: workers on "
                     "other nodes will not find master.json or the keys; set CW_HOME to a directory "
                     "on the shared filesystem (your home directory, as a rule)")


def filesystem(path: Path) -> tuple[str, str]:
    """(type, mount point) of the filesystem holding ``path``, from /proc/self/mountinfo."""
    best = ("unknown", "/")
    target = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        fields = line.split(" ")
        try:
            mount, kind = fields[4], fields[fields.index("-") + 1]
        except (IndexError, ValueError):
            continue
        mount = mount.replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (kind, mount)
    return best


def _master_json(cdir: Path, cluster: Optional[str], found: list[Finding],
                 slurm: bool) -> tuple[Optional[dict], str]:
    problem = master_problem(cluster)
    if problem:
        found.append((PROBLEM, problem))
        return None, ""
    info = read_json(cdir / "master.json")
    if info is None:
        found.append((PROBLEM, f"no master.json in {cdir}: no master runs for this cluster (start one: "
                               "`cw local start`, `./slurm.py start`)"))
        return None, ""
    address = f"{info['host']}:{info['port']}"
    if slurm and info["host"] in ("127.0.0.1", "localhost", "::1"):
        found.append((PROBLEM, f"master.json gives {address}: a worker on another node cannot reach "
                               "it; start the master with --host 0.0.0.0 (slurm.py does)"))
    return info, address


def versions(workers: list[dict]) -> list[Finding]:
    """Workers whose Python (major.minor) or cloudpickle is not this client's."""
    import cloudpickle

    mine = {"python": ".".join(platform.python_version().split(".")[:2]),
            "cloudpickle": cloudpickle.__version__}
    odd: dict[tuple[str, str], list[str]] = {}
    for w in workers:
        theirs = {"python": ".".join(str(w.get("python") or "?").split(".")[:2]),
                  "cloudpickle": str(w.get("cloudpickle") or "?")}
        for what in ("python", "cloudpickle"):
            if theirs[what] != mine[what]:
                odd.setdefault((what, theirs[what]), []).append(f"{w['host']}:{w['pid']}")
    if not odd:
        return [(OK, f"every worker runs Python {mine['python']} and cloudpickle {mine['cloudpickle']}, "
                     "as this client")] if workers else [(NOTE, "no worker is registered")]
    return [(PROBLEM, f"{len(names)} worker(s) run {what} {version}, this client {mine[what]} "
                      f"({', '.join(names[:3])}{' ...' if len(names) > 3 else ''}): what one pickles the "
                      f"other may not load; install the same {what} for both")
            for (what, version), names in sorted(odd.items())]


def _direct_ports() -> Finding:
    from ..direct import ports

    try:
        first, last = ports()
    except ValueError as e:
        return PROBLEM, str(e)
    for port in range(first, last + 1):
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return OK, f"the direct path has free ports here ({port} of {first}-{last}, CW_DIRECT_PORTS)"
            except OSError:
                continue
    return (NOTE, f"no free port in {first}-{last} (CW_DIRECT_PORTS): clients here send big data "
                  "through the master")


# -- why queued jobs wait -----------------------------------------------------
def why(snap: dict, pending: Optional[list[tuple[str, str]]] = None) -> list[str]:
    """Why ``snap``'s queued jobs do not run, a line each; ``pending``: this
    cluster's worker jobs waiting in SLURM's queue, (name, reason)."""
    queued, workers = snap["totals"]["queued"], snap["workers"]
    if not queued:
        return [f"no job waits: {snap['totals']['running']} running"]
    lines = [f"{queued} job(s) wait in the master's queue"]
    for name, reason in pending or ():
        lines.append(f"worker job {name} waits in SLURM's queue: {reason}")
    if not workers:
        lines.append("no worker is registered: start some (`cw local start -M -n N`, "
                     "`./slurm.py -M -n N start`)" + (", or wait for those SLURM holds" if pending else ""))
        return lines
    draining = [w for w in workers if w["state"] == "draining"]
    if draining:
        lines.append(f"{len(draining)} worker(s) drain (SIGTERM: a time limit, scancel): they take no job")
    executors = [e for e in snap["executors"] if not e["draining"]]
    idle = [e for e in executors if not e["running"]]
    if not executors:
        lines.append("no executor takes jobs: start more workers")
    elif not idle:
        oldest = max((e["age"] or 0 for e in executors), default=0)
        lines.append(f"all {len(executors)} executor(s) are busy (the longest job has run {oldest:.0f} s): "
                     "more workers would take the queue sooner")
    elif snap.get("parked"):
        left = max((w["left"] for w in workers if w.get("left") is not None), default=None)
        lines.append(f"{snap['parked']} idle executor(s) could finish no queued job in time: the jobs were "
                     f"submitted with expected= longer than their workers have left"
                     + (f" (at most {left} s)" if left is not None else "")
                     + "; start workers with more time (`./slurm.py -M -n N --time T start`)")
    else:
        lines.append(f"{len(idle)} executor(s) are idle: the queue is being handed out")
    return lines
