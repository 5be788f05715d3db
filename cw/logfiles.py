"""The cluster's log files: where each process logs, and reading them back (``cw logs``).

::

    $CW_HOME/<cluster>/logs/
        master-<host>-<pid>.log    the master's events (Python logging, one line each)
        worker-<host>-<pid>.log    a worker's supervisor, its executors and their jobs'
                                   prints ("job 17 stdout: ..."); the local launcher
                                   names what it captures of a process so too
        *.log                      what other launchers capture of raw stdout/stderr

(``$CW_LOG_DIR`` puts them elsewhere, e.g. on a node's local disk; like the
cluster directory it must be the user's own, which no one else may write in.)
Files are 0600, opened without following links; ``cw logs`` prints what
they hold with control characters escaped (``\\x1b``), so a job's output
cannot drive the reader's terminal.

Lines start with a timestamp (``2026-01-02 10:11:12,345``), so the files of
many processes merge into one time-ordered stream.
"""
from __future__ import annotations

import errno
import heapq
import logging
import os
import re
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # all but tab: a terminal acts on them


def logs_dir(cluster_dir: Path) -> Path:
    """``$CW_LOG_DIR`` if set (refused where another user made it or may write
    in it, unless it is root's and sticky, like /tmp), else the cluster
    directory's ``logs/``."""
    from .cluster import trusted

    value = os.environ.get("CW_LOG_DIR", "").strip()
    if not value:
        return cluster_dir / "logs"
    return trusted(Path(value).expanduser(), "remove it or set CW_LOG_DIR to a directory of yours",
                   sticky=True)


def open_log(path: Path) -> int:
    """A descriptor appending to the log file ``path``: created 0600, never
    through a link, only a regular file of this user's (else OSError)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise OSError(errno.EPERM, "not a regular file of yours", str(path))
    if st.st_mode & 0o077:
        os.fchmod(fd, 0o600)  # an older cw's, made with the umask
    os.set_blocking(fd, True)  # O_NONBLOCK was for the open only: a FIFO planted there must not hang it
    return fd


class _PrivateFileHandler(logging.FileHandler):
    """A FileHandler whose file is ``open_log``'s: 0600, never through a link."""

    def _open(self) -> TextIO:
        return open(open_log(Path(self.baseFilename)), "a", encoding=self.encoding, errors=self.errors)


def printable(line: str) -> str:
    """``line`` with control characters (escape sequences, carriage returns) as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


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
            handlers.append(_PrivateFileHandler(logfile, encoding="utf-8"))
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
        out.append(printable(f"{label}{line}"))
    return out[-tail:] if tail else out


def _read(path: Path, offset: int = 0) -> bytes:
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return b""
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
                emit(printable(f"{path.stem}| {line.decode('utf-8', 'replace')}"))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def role_log_file(cluster: Optional[str], role: str) -> Optional[Path]:
    """Where a master or worker started by hand logs: its cluster's logs
    directory, or None (stderr only); a ClusterError where that directory
    is not to be trusted."""
    from .cluster import cluster_dir

    try:
        cdir = cluster_dir(cluster, create=True)
        logs = logs_dir(cdir)
        if stderr_in(logs):
            # A launcher (local, SLURM, the container entrypoint) keeps our
            # stderr as this process's log already: one file, not two.
            return None
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        return log_path(logs_dir(cdir), role)  # checked again: made by another user meanwhile?
    except OSError:
        return None  # no writable cluster directory here: stderr only
