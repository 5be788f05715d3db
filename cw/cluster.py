"""The cluster directory: where a cluster's master, launchers and clients meet.

``$CW_HOME/<cluster>`` (default ``~/.cw/default``, mode 0700) lives on the
shared filesystem and holds::

    master.json     host, port, pid (and its pid namespace), protocol version of the running master
    succession.json how a master job submits its successor (cw.succession)
    pids/*.json     processes a launcher started: pid and create time
    logs/           master and worker logs
    ssh.json, ssh/  machines `cw ssh start` started workers on, and their records

Also here: how a client or worker finds its master when given no host.
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
from pathlib import Path
from typing import Optional

import psutil

from .errors import ClusterError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def home() -> Path:
    return Path(os.environ.get("CW_HOME") or "~/.cw").expanduser()


def check_name(name: str, what: str = "cluster") -> str:
    if not _NAME.match(name):
        raise ClusterError(
            f"invalid {what} name {name!r}: use letters, digits, '_', '.', '-' (at most 64, "
            f"not starting with '.', '_' or '-'), e.g. {'alice' if what == 'key' else 'default'}"
        )
    return name


def trusted(path: Path, fix: str, private: bool = False, sticky: bool = False) -> Path:
    """``path`` if no other user made it or may change what it holds, as
    OpenSSH's StrictModes checks (the directory itself, not its parents): a
    directory owned by this user (or root) that nobody else may write in (a
    ``private`` one: nobody else may enter), and, if it is a link, a link of
    this user (or root). With ``sticky``, a sticky directory of root's that
    anyone may write in passes too (like /tmp, or a container image's
    /var/log/cw): nobody else may remove or rename a file of ours there, and
    files there are opened without following links. An absent one passes:
    cw creates it 0700. Else a ClusterError naming it and ``fix``."""
    try:
        link = os.lstat(path)
        st = os.stat(path) if stat.S_ISLNK(link.st_mode) else link
    except FileNotFoundError:
        if not os.path.lexists(path):
            return path
        raise ClusterError(f"refusing {path}: a link to nothing; {fix}") from None
    except OSError as e:
        raise ClusterError(f"cannot check {path}: {e.strerror}; {fix}") from e
    me = os.geteuid()
    problem = None
    if link.st_uid not in (me, 0):
        problem = f"{'a link ' if link is not st else ''}owned by uid {link.st_uid}, not you (uid {me})"
    elif st.st_uid not in (me, 0):
        problem = f"owned by uid {st.st_uid}, not you (uid {me})"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "not a directory"
    elif sticky and st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
        pass
    elif st.st_mode & (0o077 if private else 0o022):
        others = "others may enter it" if private and not st.st_mode & 0o022 else "others may write in it"
        problem, fix = f"{others} (mode {stat.S_IMODE(st.st_mode):04o})", \
            f"chmod {'700' if private else 'go-w'} {path}, or {fix}"
    if problem is not None:
        raise ClusterError(f"refusing {path}: {problem}; {fix}")
    return path


def trusted_home() -> Path:
    """``$CW_HOME``, checked (``trusted``)."""
    return trusted(home(), "remove it or set CW_HOME to a directory of yours")


def cluster_name(name: Optional[str] = None) -> str:
    return check_name(name or os.environ.get("CW_CLUSTER") or "default")


def cluster_dir(name: Optional[str] = None, create: bool = False) -> Path:
    """``$CW_HOME/<name>``; refused (``trusted``) where another user made or
    may change it or ``$CW_HOME``: it holds keys, and commands to run (ssh.json)."""
    name = cluster_name(name)
    path = trusted_home() / name
    fix = "remove it, or use another cluster name (--cluster) or CW_HOME"
    if create:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        trusted_home()
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            os.chmod(path, 0o700)  # made readable by others (a wide umask), never writable: ours to tighten
    trusted(path, fix, private=True)
    if create:
        for sub in (path / "pids", path / "logs"):
            sub.mkdir(mode=0o700, exist_ok=True)
    return path


def write_json(path: Path, data: dict) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def master_problem(name: Optional[str] = None) -> Optional[str]:
    """What is wrong with a cluster's master.json, if it is there and wrong."""
    path = cluster_dir(name) / "master.json"
    try:
        data = json.loads(path.read_text())
    except OSError:
        return None  # absent (or unreadable: said where it is opened)
    except ValueError as e:
        return f"{path} is not valid JSON ({e})"
    if not isinstance(data, dict):
        return f"{path} holds no JSON object"
    port, host = data.get("port"), data.get("host")
    if type(port) is not int or not 0 < port < 65536:
        return f"{path}: port {port!r} is not a port (1-65535)"
    if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
        return f"{path}: host {host!r} is not a host name or address"
    return None


def read_master(name: Optional[str] = None) -> Optional[dict]:
    """master.json of a cluster, or None if absent, malformed (``master_problem``
    says how) or left by a dead master here."""
    info = read_json(cluster_dir(name) / "master.json")
    if info is None or master_problem(name) is not None:
        return None
    same_host = info.get("hostname") == socket.gethostname()
    # A pid means something only in its own pid namespace: a master in a
    # container (host network, same hostname) is not checked from outside.
    if same_host and info.get("pidns", pid_namespace()) == pid_namespace() \
            and not pid_alive(info.get("pid")):
        return None  # stale: its master ran on this host and is gone
    return info


def master_address(name: Optional[str] = None) -> Optional[str]:
    """``tcp://host:port`` of the cluster's master as master.json says it,
    or None (no file, a bad one, its master gone, an untrusted directory).
    Peers that lost their master read it again to follow a successor
    (``cw.succession``) or a master restarted on another port."""
    try:
        info = read_master(name)
    except ClusterError:
        return None
    return None if info is None else f"tcp://{info['host']}:{info['port']}"


def pid_namespace() -> Optional[str]:
    """This process's pid namespace (Linux), to tell whether a recorded pid is ours to check."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


# How far a process's create time, as psutil computes it, may move: it adds the
# boot time, which the kernel derives from the wall clock, so a clock step moves
# it by a second. A pid reused within a second of its last owner's start is not
# a case to guard against.
CREATE_TIME_SLACK = 1.0


def pid_alive(pid: object, create_time: Optional[float] = None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > CREATE_TIME_SLACK:
            return False  # the pid was reused by another process
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def env_port() -> Optional[int]:
    """``CW_PORT`` as a number; None when unset or 0 (0 = the master picks one)."""
    value = os.environ.get("CW_PORT", "").strip()
    if not value:
        return None
    if not (value.isdigit() and 0 <= int(value) < 65536):
        raise ClusterError(f"CW_PORT={value!r} is not a port number (0-65535)")
    return int(value) or None


def advertised_host(bind_host: str) -> str:
    """The address peers should dial for a master bound to ``bind_host``."""
    if bind_host in ("0.0.0.0", "*", "", "::"):
        return node_name()
    return bind_host


def node_name() -> str:
    """This machine's name as its peers know it: SLURM's node name inside a
    SLURM job (it resolves on the cluster by construction), else the FQDN."""
    return os.environ.get("SLURMD_NODENAME") or socket.getfqdn()
