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
        try:
            done = subprocess.run(args, shell=shell, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            said = f"timed out after {timeout:g} s\n".encode()
            done = subprocess.CompletedProcess(args, TIMED_OUT, e.stdout or b"", (e.stderr or b"") + said)
        except OSError as e:  # no such program, not executable
            done = subprocess.CompletedProcess(args, NOT_FOUND, b"", f"{e}\n".encode())
        if done.returncode == 0:
            break
    if check and done.returncode != 0:
        raise CommandFailed(done.returncode, args, done.stdout, done.stderr)
    return done
