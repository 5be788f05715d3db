"""The fenced blocks of README.md and docs/, and how each one is marked.

A fence's info string says what the block is, for the reader and for
``test_docs.py`` alike:

    ```python run            run it (python), in document order
    ```sh run                run it (bash -eu -o pipefail)
    ```sh run=slurm          run it on a test bed: slurm, ssh or container
    ```sh norun: REASON      a command that no test runs, and why
    ```text / ```console     output, file contents, pictures: never run

``Session`` is where a file's ``run`` blocks run: ``tests/docs`` runs the
local ones, and the suite of each test bed runs its own (``tests/slurm``,
``tests/container``).

A block in python, sh, bash or shell must carry one of the first four
marks; any other language must carry none; a fence without a language is
an error. So no command can sit in the docs without a test, or a stated
reason, behind it.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND_LANGS = ("python", "sh", "bash", "shell")
BEDS = ("slurm", "ssh", "container")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class MarkError(ValueError):
    """A fence whose info string breaks the convention above."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int          # the opening fence's line, 1-based
    lang: str
    mode: str          # "run", "norun" or "show" (not a command)
    bed: str | None    # for mode "run": None (local) or one of BEDS
    reason: str        # for mode "norun"
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_info(info: str) -> tuple[str, str, str | None, str]:
    """``(lang, mode, bed, reason)`` of a fence's info string, or MarkError."""
    info = info.strip()
    if not info:
        raise MarkError("a fence must name its language (text or console for output and pictures)")
    lang, _, rest = info.partition(" ")
    rest = rest.strip()
    if lang not in COMMAND_LANGS:
        if rest:
            raise MarkError(f"only {', '.join(COMMAND_LANGS)} blocks take a mark; "
                            f"{lang!r} is never run, drop {rest!r}")
        return lang, "show", None, ""
    if rest == "run":
        return lang, "run", None, ""
    if rest.startswith("run="):
        bed = rest[len("run="):]
        if bed not in BEDS:
            raise MarkError(f"unknown test bed {bed!r}; choose from: {', '.join(BEDS)}")
        return lang, "run", bed, ""
    if rest.startswith("norun:") and rest[len("norun:"):].strip():
        return lang, "norun", None, rest[len("norun:"):].strip()
    raise MarkError(f"a {lang} block must say `run`, `run=BED` ({', '.join(BEDS)}) "
                    f"or `norun: REASON`; got {info!r}")


def blocks(path: Path) -> tuple[list[Block], list[str]]:
    """Every fenced block of one Markdown file, and one error per bad mark."""
    found: list[Block] = []
    errors: list[str] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m["fence"], i
        end = start + 1
        while end < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[end]):
            end += 1
        code = "\n".join(line[len(m["indent"]):] for line in lines[start + 1:end]) + "\n"
        try:
            lang, mode, bed, reason = parse_info(m["info"])
            found.append(Block(path, start + 1, lang, mode, bed, reason, code))
        except MarkError as e:
            errors.append(f"{path.relative_to(ROOT)}:{start + 1}: {e}")
        i = end + 1
    return found, errors


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


# -- running them -------------------------------------------------------------

BLOCK_TIMEOUT = 120  # seconds one block may take


class Session:
    """Where a file's blocks run; leaves nothing behind (``close``).

    A private ``CW_HOME`` (mode 0700, its path holding a space), its own
    cluster name, a free port (``CW_PORT=0``) and ``TMPDIR``, ``cw`` on
    ``PATH`` as this checkout's CLI, ``./mp.py`` and friends from the
    repository root. ``close`` stops every local cluster made there, with
    ``cw local stop``, and names any process carrying the ``CW_HOME`` that
    survived it.
    """

    def __init__(self, tmp: Path, launcher: str | None = "local") -> None:
        self.tmp = tmp
        self.home = tmp / "cw home"
        self.home.mkdir(mode=0o700)
        tmpdir = tmp / "tmp"
        tmpdir.mkdir()
        bindir = tmp / "bin"
        bindir.mkdir()
        cw = bindir / "cw"  # this checkout's CLI, whatever `cw` the machine has installed
        cw.write_text(f"#!{sys.executable}\nimport sys\nfrom cw.cli import main\n"
                      "sys.argv[0] = 'cw'\nmain()\n")
        cw.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CW_")}
        env.update(CW_HOME=str(self.home), CW_CLUSTER="docs",
                   CW_PORT="0", TMPDIR=str(tmpdir), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
                   PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]))
        if launcher:
            env["CW_LAUNCHER"] = launcher
        self.env = env
        self.count = 0

    def run(self, block: Block) -> str:
        self.count += 1
        if block.lang == "python":
            script = self.tmp / f"block{self.count}.py"
            script.write_text(block.code)
            argv = [sys.executable, str(script)]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", block.code]
        code, out = self._call(argv, BLOCK_TIMEOUT)
        if code != 0:
            pytest.fail(f"{block.where}: the {block.lang} block exited with {code}:\n{block.code}\n"
                        f"--- its output ---\n{out}")
        return out

    def _call(self, argv: list[str], timeout: float) -> tuple[int | str, str]:
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            return proc.returncode, out
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            return f"a timeout ({timeout} s)", out

    def close(self) -> list[str]:
        """Stop every cluster made here; kill and name what survived that."""
        for cluster in sorted(p.name for p in self.home.iterdir() if p.is_dir()):
            self._call([sys.executable, "-m", "cw.cli", "local", "stop", "--cluster", cluster], 60)
        survivors = _carrying(str(self.home))
        deadline = time.monotonic() + 10
        while survivors and time.monotonic() < deadline:  # a worker draining after SIGTERM
            time.sleep(0.2)
            survivors = _carrying(str(self.home))
        for p in survivors:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(survivors, timeout=10)
        return [f"pid {p.pid}: {' '.join(p.info['cmdline'] or [])}" for p in survivors]


def _carrying(home: str) -> list[psutil.Process]:
    """Live processes whose environment or command line holds ``home``."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if p.environ().get("CW_HOME") == home or any(home in a for a in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


def run_bed_blocks(path: Path, bed: str, session: Session) -> None:
    """The file's ``run=BED`` blocks, in document order, in one session."""
    ran = 0
    for block in blocks(path)[0]:
        if block.mode == "run" and block.bed == bed:
            session.run(block)
            ran += 1
    assert ran, f"{path.relative_to(ROOT)} has no run={bed} block"
