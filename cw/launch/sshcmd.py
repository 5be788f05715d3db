"""The SSH launcher's inputs and commands, as pure functions.

A CSV file names the machines (``parse_machines``); ``ssh_command`` and
``remote_command`` build what runs, every value through ``shlex.quote``;
``describe_failure`` turns ssh's exit code and stderr into what a user can act on.
"""
from __future__ import annotations

import csv
import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ClusterError

COLUMNS = ("address", "ssh_user", "ssh_port", "local_ssh_file", "cpu_limit")
EXIT_NO_CWD, EXIT_NO_PYTHON = 96, 97  # from the remote shell, before python runs
_ADDRESS = re.compile(r"^[A-Za-z0-9_.:%\[\]][A-Za-z0-9_.:%\[\]-]*$")
MAX_LINE = 4096  # characters in a row: far more than five columns need
_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.@-]*$")
# describe_failure's verdicts after which nothing ran on the machine
NOT_STARTED = ("auth refused", "host key not trusted", "unreachable", "python missing",
               "directory missing", "cw is not importable", "cannot run ssh")


@dataclass(frozen=True)
class Machine:
    """One CSV row: where to SSH to and how many executors to run there."""

    address: str
    user: Optional[str] = None
    port: Optional[int] = None
    key: Optional[str] = None
    cpu_limit: Optional[int] = None
    line: int = 0

    @property
    def label(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.address}:{self.port or 22}"

    @property
    def mid(self) -> str:
        """A directory name for this machine's records."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.address}-{self.port or 22}")


# -- the CSV file -------------------------------------------------------------------
def parse_machines(text: str, source: str = "CSV") -> list[Machine]:
    """Rows ``address, ssh_user, ssh_port, local_ssh_file, cpu_limit``; blanks are defaults."""
    machines: list[Machine] = []
    seen: dict[tuple, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _fields(line, f"{source}, line {n}")
        if not machines and not seen and [f.lower() for f in fields] == list(COLUMNS[:len(fields)]):
            continue  # a header row
        try:
            machine = _machine(fields, n)
        except ValueError as e:
            raise ClusterError(f"{source}, line {n}: {e}; expected: {', '.join(COLUMNS)}") from None
        where = (machine.address, machine.port or 22)
        if where in seen:
            raise ClusterError(f"{source}, line {n}: {machine.label} is already on line {seen[where]}")
        seen[where] = n
        machines.append(machine)
    if not machines:
        raise ClusterError(f"{source} lists no machine; one row per machine: {', '.join(COLUMNS)}")
    return machines


def _fields(line: str, where: str) -> list[str]:
    if len(line) > MAX_LINE:  # csv's own limit (128 KiB a field) would raise mid-parse
        raise ClusterError(f"{where}: {len(line)} characters, at most {MAX_LINE} in a row; "
                           f"expected: {', '.join(COLUMNS)}")
    try:
        return [f.strip() for f in next(csv.reader([line], skipinitialspace=True))]
    except csv.Error as e:
        raise ClusterError(f"{where}: {e}; expected: {', '.join(COLUMNS)}") from None


def _machine(fields: list[str], line: int) -> Machine:
    if len(fields) > len(COLUMNS):
        raise ValueError(f"{len(fields)} columns, at most {len(COLUMNS)}")
    address, user, port, key, cpus = fields + [""] * (len(COLUMNS) - len(fields))
    if not _ADDRESS.match(address):
        raise ValueError(f"address {address!r} is not a host name or IP address")
    if user and not _USER.match(user):
        raise ValueError(f"ssh_user {user!r} is not a user name")
    if key:
        key = os.path.abspath(os.path.expanduser(key))
        if not os.path.isfile(key):
            raise ValueError(f"local_ssh_file {key} does not exist")
    return Machine(address, user or None, _number("ssh_port", port, 65535), key or None,
                   _number("cpu_limit", cpus, 100_000), line)


def _number(column: str, value: str, top: int) -> Optional[int]:
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= top:  # not '²': int() refuses it
        raise ValueError(f"{column} {value!r} is not a number from 1 to {top}")
    return int(value)


def read_machines(path: str) -> list[Machine]:
    """The machines of a CSV file: UTF-8, with or without the BOM spreadsheets write."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ClusterError(f"cannot read the machines file: {e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ClusterError(f"{path}, line {line}: not UTF-8 text (byte {data[e.start]:#04x}); "
                           "save the file as UTF-8 (CSV UTF-8 in a spreadsheet)") from None
    return parse_machines(text, path)


# -- commands (pure) -----------------------------------------------------------------
def ssh_command(machine: Machine, remote: str, *, options: Sequence[str] = (),
                connect_timeout: int = 10) -> list[str]:
    """ssh that never prompts; ``options`` (``-o KEY=VALUE``) come first, so they win."""
    cmd = ["ssh"]
    for option in options:
        cmd += ["-o", option]
    cmd += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "LogLevel=ERROR", "-T", "-x"]
    if machine.user:
        cmd += ["-l", machine.user]
    if machine.port:
        cmd += ["-p", str(machine.port)]
    if machine.key:
        # ssh expands %-tokens in identity file names: a literal % is %%.
        cmd += ["-i", machine.key.replace("%", "%%"), "-o", "IdentitiesOnly=yes"]
    return [*cmd, "--", machine.address, remote]


def remote_command(python: str, cwd: str, action: str, env: Optional[dict] = None) -> str:
    """The POSIX shell line ssh runs: enter CWD, check PYTHON, run cw.launch.remote."""
    q = shlex.quote
    assigns = "".join(f"{k}={q(v)} " for k, v in sorted((env or {}).items()))
    return (f"cd {q(cwd)} || exit {EXIT_NO_CWD}; "
            f"command -v {q(python)} >/dev/null 2>&1 || exit {EXIT_NO_PYTHON}; "
            f"exec env {assigns}{q(python)} -m cw.launch.remote {q(action)}")


def worker_args(host: str, port: int, cluster: str, machine: Machine, *, master_timeout: float,
                insecure: bool) -> list[str]:
    """Arguments of ``python -m cw.worker`` on one machine."""
    procs = str(machine.cpu_limit) if machine.cpu_limit else "auto"
    return [host, "--port", str(port), "--cluster", cluster, "--procs", procs,
            "--master-timeout", f"{master_timeout:g}", *(["--insecure"] if insecure else [])]


def describe_failure(returncode: int, stderr: str, *, python: str, cwd: str) -> str:
    """What went wrong on a machine, and what to do about it."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {returncode}"
    if returncode == 255:
        if "Permission denied" in stderr or "Too many authentication failures" in stderr:
            return f"auth refused: {last} (check ssh_user and local_ssh_file)"
        if "Host key verification failed" in stderr or "IDENTIFICATION HAS CHANGED" in stderr:
            return f"host key not trusted: {last} (ssh to it once, or add its key to known_hosts)"
        return f"unreachable: {last}"
    if returncode == EXIT_NO_PYTHON:
        return f"python missing: no {python} on that machine (install it, or pass --python)"
    if returncode == EXIT_NO_CWD:
        return f"directory missing: no {cwd} on that machine (start from a directory it shares)"
    if "No module named" in stderr and "cw" in stderr:
        return f"cw is not importable by {python} there: {last} (install cw, or share it via PYTHONPATH)"
    return f"remote command failed: {last}"


def route_address(address: str, port: int = 22) -> str:
    """This machine's address on the route to ``address``."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(sockaddr)  # UDP: sends nothing, only picks the route
            return str(sock.getsockname()[0])
    except OSError as e:
        raise ClusterError(f"cannot tell how this machine reaches {address}: {e}; "
                           "pass --master-address") from e
