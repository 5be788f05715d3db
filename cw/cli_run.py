"""``cw run`` and ``cw map``: programs on the cluster's warm workers (``cw.commands``)."""
from __future__ import annotations

import os
import shlex
import stat
import sys
import time
from collections import deque
from pathlib import Path
from typing import Optional

import click

from .cli_common import cluster_option, friendly
from .errors import CWError

RUN_SETTINGS = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@click.command("run", context_settings=RUN_SETTINGS)
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds the command may run; then it is stopped (exit status 124).")
@click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Run a command that fails again, this many times at most.")
@cluster_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@friendly
def run_command(timeout: Optional[float], retries: int, cluster: Optional[str], command: tuple) -> None:
    """Run COMMAND (a program and its arguments: `cw run -- prog arg ...`) on
    a worker, in this directory: its output comes here, its exit status is ours."""
    from .client import ClusterExecutor

    with ClusterExecutor(cluster=cluster) as ex:
        done = ex.submit_command(list(command), timeout=timeout, attempts=retries + 1).result()
    sys.stdout.buffer.write(done.stdout)
    sys.stderr.buffer.write(done.stderr)
    sys.exit(min(done.returncode, 255) if done.returncode >= 0 else 128 - done.returncode)


@click.command("map", context_settings=RUN_SETTINGS)
@click.option("--each", "each", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Run the command given after it once per line of this file, {} standing "
                   "for the line (shell-quoted), as GNU parallel does.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False), default=None,
              help="Where each command's N.out and N.err, summary.tsv and the journal go "
                   "[default: FILE.out, or the --each file's name + .out].")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds each command may run; then it is stopped (exit status 124).")
@click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Run a command that fails again, this many times at most.")
@cluster_option
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@friendly
def map_command(each: Optional[str], output_dir: Optional[str], timeout: Optional[float], retries: int,
                cluster: Optional[str], args: tuple) -> None:
    """Run many commands on the cluster: `cw map FILE` runs each line of FILE
    (a shell command line; blank lines and # comments skipped); `cw map --each
    LIST -- prog {} ...` runs prog once per line of LIST. Each command's output
    goes to OUTPUT_DIR/N.out and N.err, its exit status to summary.tsv; the exit
    status is 1 if any failed. Run it again and the commands that succeeded are
    not run again (OUTPUT_DIR/journal.cwj)."""
    if each is not None:
        if not args:
            raise click.UsageError("--each LIST needs a command after it: cw map --each LIST -- prog {}")
        lines = _lines(Path(each))
        commands = [_fill(args, line) for line in lines]
        source = Path(each)
    else:
        if len(args) != 1:
            raise click.UsageError("give one FILE of commands, or --each LIST -- COMMAND")
        source = Path(args[0])
        if not source.is_file():
            raise click.BadParameter(f"{source}: no such file", param_hint="FILE")
        commands = _lines(source)
    out = Path(output_dir) if output_dir else source.with_name(source.name + ".out")
    try:
        failed = _map(commands, _private_dir(out), timeout, retries, cluster)
    except OSError as e:
        raise click.ClickException(f"cannot write the outputs in {out}: {e}") from e
    sys.exit(1 if failed else 0)


def _private_dir(out: Path) -> Path:
    """The output directory, made 0700, or one of ours nobody else may write
    in (else another user could read or swap what the commands printed)."""
    from .cluster import trusted

    try:
        trusted(out, "give another --output-dir")
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except CWError as e:
        raise click.ClickException(str(e)) from e
    return out


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{path}: {e}") from e
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _fill(template: tuple, line: str) -> str:
    """One shell command line: each word of the template with {} replaced by
    the line, then quoted whole (the line is never shell syntax); without a
    {}, the line is one more argument at the end, as GNU parallel does."""
    words = [word.replace("{}", line) for word in template]
    if not any("{}" in word for word in template):
        words.append(line)
    return " ".join(shlex.quote(word) for word in words)


def _map(commands: list[str], out: Path, timeout: Optional[float], retries: int,
         cluster: Optional[str]) -> int:
    from .client import ClusterExecutor
    from .commands import run_command as job

    started = time.monotonic()
    failed: list[tuple[int, int, str]] = []  # (index, exit status, command)
    rows: list[str] = []
    try:
        with ClusterExecutor(cluster=cluster, journal=out / "journal.cwj", journal_mismatch="ignore") as ex:
            futures = deque(ex.submit_call(job, (line, timeout, retries + 1, True)) for line in commands)
            for i, command in enumerate(commands, 1):
                code, stdout, stderr = _outcome(futures.popleft())  # and let go of it once written
                if code != 0:
                    failed.append((i, code, command))
                _write(out / f"{i}.out", stdout)
                _write(out / f"{i}.err", stderr)
                rows.append(f"{i}\t{code}\t{_cell(command)}\n")
            taken = ex.journal.hits if ex.journal else 0
    finally:  # what ran is said, even if the rest could not run
        _write(out / "summary.tsv", ("index\texit\tcommand\n" + "".join(rows)).encode())
    click.echo(f"{len(commands)} command(s): {len(commands) - len(failed)} succeeded ({taken} done by an "
               f"earlier run), {len(failed)} failed; in {time.monotonic() - started:.1f} s; outputs in {out}")
    _say_failed(failed, out)
    return len(failed)


SHOWN = 20  # failed commands named after the summary; summary.tsv has them all


def _say_failed(failed: list[tuple[int, int, str]], out: Path) -> None:
    for i, code, command in failed[:SHOWN]:
        short = command if len(command) <= 60 else command[:57] + "..."
        click.echo(f"  failed: #{i} exit {code}: {_cell(short)}  (stderr: {out / f'{i}.err'})")
    if len(failed) > SHOWN:
        click.echo(f"  ... and {len(failed) - SHOWN} more: see the exit column of {out / 'summary.tsv'}")


def _cell(text: str) -> str:
    """A command as one cell of summary.tsv: its tabs and line breaks escaped."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _outcome(future) -> tuple[int, bytes, bytes]:
    from .commands import CommandFailed

    try:
        done = future.result()
        return done.returncode, done.stdout, done.stderr
    except CommandFailed as e:
        return e.returncode, e.stdout or b"", e.stderr or b""
    except Exception as e:  # the job itself failed: its worker lost, cancelled, refused
        return 1, b"", f"{type(e).__name__}: {e}\n".encode()


def _write(path: Path, data: bytes) -> None:
    """A file of ours: 0600, never through a link, never one another user made."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a file of yours")
        os.fchmod(fd, 0o600)
        f.truncate()
        f.write(data)
