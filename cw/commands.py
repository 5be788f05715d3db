"""Programs as cw jobs: ``executor.submit_command``, ``cw run`` and ``cw map``.

A command runs on a worker in the client's working directory (as every
job does), its output captured; the job's result is a
``subprocess.CompletedProcess`` (``args``, ``returncode``, ``stdout``,
``stderr``, bytes). What the command started ends with it (the executor's
reaper). ``run_command`` is the job itself: it retries a failed command
``attempts - 1`` times, gives up on one past ``timeout`` seconds (exit
status 124, as timeout(1) says it), and with ``check`` raises
``CommandFailed`` for a non-zero exit status, so that a sweep's journal
keeps only the commands that succeeded.
"""
from __future__ import annotations

import subprocess
import tempfile
from typing import Optional, Sequence, Union

Command = Union[str, Sequence[str]]
TIMED_OUT = 124  # timeout(1)'s exit status
NOT_FOUND = 127  # the shell's, for a program that is not there


class CommandFailed(subprocess.CalledProcessError):
    """A command exited with a non-zero status (after its attempts)."""

    def __str__(self) -> str:
        tail = (self.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        return f"{super().__str__()}{': ' + tail[0] if tail else ''}"


def run_command(command: Command, timeout: Optional[float] = None, attempts: int = 1,
                check: bool = False) -> subprocess.CompletedProcess:
    """Run ``command`` (a list: the program and its arguments; a string: a
    shell command line) and return what it did."""
    shell = isinstance(command, str)
    args = command if shell else list(command)
    done = subprocess.CompletedProcess(args, 0, b"", b"")
    for _ in range(max(1, attempts)):
        done = _once(args, shell, timeout)
        if done.returncode == 0:
            break
    if check and done.returncode != 0:
        raise CommandFailed(done.returncode, args, done.stdout, done.stderr)
    return done


def _once(args: Command, shell: bool, timeout: Optional[float]) -> subprocess.CompletedProcess:
    """One run. Output goes to files, not pipes: a program that leaves a
    child in the background (``sleep 60 &``) returns when it exits, and the
    executor's reaper ends the child; pipes would wait for the child too."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            code = subprocess.run(args, shell=shell, stdout=out, stderr=err, timeout=timeout,
                                  stdin=subprocess.DEVNULL).returncode
            said = b""
        except subprocess.TimeoutExpired:
            code, said = TIMED_OUT, f"timed out after {timeout:g} s\n".encode()
        except OSError as e:  # no such program, not executable
            code, said = NOT_FOUND, f"{e}\n".encode()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, code, out.read(), err.read() + said)
