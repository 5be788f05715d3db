"""The cluster's log files: where each process logs, and reading them back (``cw logs``).

::

    $CW_HOME/<cluster>/logs/
        master-<host>-<pid>.log    the master's events (Python logging, one line each)
        worker-<host>-<pid>.log    a worker's supervisor, its executors and their jobs'
                                   prints ("job 17 stdout: ..."); the local launcher
                                   names what it captures of a process so too
        *.log                      what other launchers capture of raw stdout/stderr

(``$CW_LOG_DIR`` puts them elsewhere, e.g. on a node's local disk.)

Lines start with a timestamp (``2026-01-02 10:11:12,345``), so the files of
many processes merge into one time-ordered stream.
"""
from __future__ import annotations

import heapq
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def logs_dir(cluster_dir: Path) -> Path:
    """``$CW_LOG_DIR`` if set, else the cluster directory's ``logs/``."""
    value = os.environ.get("CW_LOG_DIR", "").strip()
    return Path(value).expanduser() if value else cluster_dir / "logs"


def log_path(logs: Path, role: str, pid: Optional[int] = None) -> Path:
    """A process's log file (this one's by default): ``<role>-<host>-<pid>.log``,
    so that ``cw logs PID`` finds it by the pid ``cw status`` shows."""
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", host) or "host"
    return logs / f"{role}-{host}-{os.getpid() if pid is None else pid}.log"


def stderr_in(directory: Path) -> bool:
    """Is stderr already a file in ``directory``? (A launcher captured it there;
    logging to it too would write every line twice.)"""
    try:
        return Path(os.readlink("/proc/self/fd/2")).parent == directory.resolve()
    except OSError:
        return False  # not Linux, or stderr is no file


LEVELS = ("debug", "info", "warning", "error")  # what --log-level and CW_LOG_LEVEL take


def setup_logging(level: str, logfile: Optional[Path] = None) -> None:
    """Log to ``logfile`` (in the cluster's ``logs/``) and to stderr; only warnings
    and errors to stderr when a launcher already sends it to a file there.
    (Processes call this once, at start: the library itself configures no logging.)"""
    handlers: list[logging.Handler] = []
    if logfile is not None:
        try:
            handlers.append(logging.FileHandler(logfile, encoding="utf-8"))
        except OSError as e:
            print(f"cw: cannot write the log file {logfile}: {e}; logging to stderr only", file=sys.stderr)
            logfile = None
    stream = logging.StreamHandler(sys.stderr)
    if logfile is not None and stderr_in(logfile.parent):
        # A launcher keeps stderr in logs/ already: only what explains a failure goes there too.
        stream.setLevel(logging.WARNING)
    handlers.append(stream)
    logging.basicConfig(level=getattr(logging, level.upper()), format=FORMAT, handlers=handlers, force=True)


def select(logs: Path, who: Optional[str] = None) -> list[Path]:
    """The log files, or those of one process: ``master``, ``worker``, a host, a pid
    or ``host:pid`` (any part of the file name matches)."""
    files = sorted(logs.glob("*.log")) if logs.is_dir() else []
    if not who:
        return files
    parts = [p for p in re.split(r"[:\s]+", who) if p]
    return [f for f in files if all(_matches(f.stem, p) for p in parts)]


def _matches(stem: str, part: str) -> bool:
    return part in stem.split("-") or (not part.isdigit() and part in stem)


def _events(lines: list[str], label: str) -> Iterator[tuple[str, str, str]]:
    """(timestamp, line, label) per line; lines without a timestamp (tracebacks)
    stay with the event before them."""
    stamp = ""
    for line in lines:
        if _STAMP.match(line):
            stamp = line[:23]
        yield stamp, line, label


def merged(files: list[Path], tail: Optional[int] = None) -> list[str]:
    """All lines of ``files`` in time order, each prefixed by its file when there are several."""
    streams = []
    for path in files:
        lines = _read(path).decode("utf-8", "replace").splitlines()
        label = f"{path.stem}| " if len(files) > 1 else ""
        streams.append(list(_events(lines, label)))
    out: list[str] = []
    seen: set[str] = set()
    current = ""
    for stamp, line, label in heapq.merge(*streams, key=lambda e: e[0]):
        if stamp != current:
            seen, current = set(), stamp
        if stamp and line in seen:
            continue  # a warning both in a process's log and in what its launcher captured
        seen.add(line)
        out.append(f"{label}{line}")
    return out[-tail:] if tail else out


def _read(path: Path, offset: int = 0) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def follow(logs: Path, who: Optional[str], emit: Callable[[str], None], poll: float = 0.5,
           stop: Callable[[], bool] = lambda: False) -> None:
    """Emit lines as they are written, to files old and new, until ``stop()``."""
    offsets = {path: _size(path) for path in select(logs, who)}
    partial: dict[Path, bytes] = {}
    while not stop():
        time.sleep(poll)
        for path in select(logs, who):
            start = offsets.get(path, 0)
            if _size(path) < start:  # truncated or replaced: from the top
                start = 0
            raw = _read(path, start)
            offsets[path] = start + len(raw)
            *lines, rest = (partial.pop(path, b"") + raw).split(b"\n")
            if rest:
                partial[path] = rest
            for line in lines:
                emit(f"{path.stem}| {line.decode('utf-8', 'replace')}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def role_log_file(cluster: Optional[str], role: str) -> Optional[Path]:
    """Where a master or worker started by hand logs: its cluster's logs
    directory, or None (stderr only)."""
    from .cluster import cluster_dir

    try:
        logs = logs_dir(cluster_dir(cluster, create=True))
        if stderr_in(logs):
            # A launcher (local, SLURM, the container entrypoint) keeps our
            # stderr as this process's log already: one file, not two.
            return None
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        return log_path(logs, role)
    except OSError:
        return None  # no writable cluster directory here: stderr only
