"""Every command and code block of README.md and docs/ runs, so the docs cannot drift.

The marks are explained in ``docblocks.py``. A file's local ``run`` blocks
run in document order in one session: a private ``CW_HOME`` (mode 0700, its
path holding a space), its own cluster name, a free port (``CW_PORT=0``) and ``TMPDIR``, ``cw`` on
``PATH`` as this checkout's CLI, ``./mp.py`` and friends from the repository
root. The session then stops every cluster it made, with ``cw local stop``,
and fails the test if any process that carries its ``CW_HOME`` survives.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from docblocks import BEDS, ROOT, Block, MarkError, blocks, doc_files, parse_info

BLOCK_TIMEOUT = 120  # seconds one block may take
BED_SETUP = {
    "slurm": "the SLURM test bed: tests/slurm/slurmbox.sh up (root), or run tests/slurm",
    "ssh": "the SSH test bed: tests/ssh/sshbox.sh up (root), or run tests/ssh",
    "container": "the container test bed: sudo docker/testbed.sh build cw, or run tests/container",
}


def _all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in blocks(path)[0]]


def _files_with(pred) -> list[Path]:
    return sorted({b.path for b in _all_blocks() if pred(b)})


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- the convention itself ------------------------------------------------------

def test_every_block_is_marked():
    errors = [e for path in doc_files() for e in blocks(path)[1]]
    assert not errors, ("fenced blocks without a valid mark (see tests/docs/docblocks.py):\n"
                        + "\n".join(errors))


@pytest.mark.parametrize("info, parsed", [
    ("python run", ("python", "run", None, "")),
    ("sh run=slurm", ("sh", "run", "slurm", "")),
    ("bash norun: needs a real multi-node SLURM site",
     ("bash", "norun", None, "needs a real multi-node SLURM site")),
    ("text", ("text", "show", None, "")),
    ("console", ("console", "show", None, "")),
])
def test_marks_are_read(info, parsed):
    assert parse_info(info) == parsed


@pytest.mark.parametrize("info", ["python", "sh", "shell ", "sh norun", "sh norun:", "sh run=pbs",
                                  "sh runn", "", "text run"])
def test_unmarked_or_bad_marks_are_refused(info):
    with pytest.raises(MarkError):
        parse_info(info)


def test_an_unmarked_block_fails_the_check(tmp_path, monkeypatch):
    import docblocks

    monkeypatch.setattr(docblocks, "ROOT", tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text("text\n\n```sh\nrm -rf /\n```\n\n```text\nout\n```\n")
    found, errors = blocks(doc)
    assert [b.lang for b in found] == ["text"]
    assert errors == ["doc.md:3: a sh block must say `run`, `run=BED` (slurm, ssh, container) "
                      "or `norun: REASON`; got 'sh'"]


# -- running them -------------------------------------------------------------

class Session:
    """Where a file's blocks run; leaves nothing behind (``close``)."""

    def __init__(self, tmp: Path) -> None:
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
        env.update(CW_HOME=str(self.home), CW_CLUSTER="docs", CW_LAUNCHER="local",
                   CW_PORT="0", TMPDIR=str(tmpdir), PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
                   PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]))
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


@pytest.fixture
def session(tmp_path):
    s = Session(tmp_path)
    yield s
    leaked = s.close()
    assert not leaked, "the docs' blocks left processes behind:\n" + "\n".join(leaked)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", _files_with(lambda b: b.mode == "run" and b.bed is None), ids=_id)
def test_local_blocks_run(path, session):
    """The file's local ``run`` blocks, in document order, in one session."""
    for block in blocks(path)[0]:
        if block.mode == "run" and block.bed is None:
            session.run(block)


@pytest.mark.parametrize("path, bed", [(p, bed) for bed in BEDS
                                       for p in _files_with(lambda b, bed=bed: b.bed == bed)],
                         ids=lambda v: _id(v) if isinstance(v, Path) else v)
def test_bed_blocks_run(path, bed):
    """Blocks that need a test bed; the docs runner does not bring beds up."""
    pytest.skip(f"{_id(path)}: its run={bed} blocks need {BED_SETUP[bed]}; "
                "the docs runner starts no test bed")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quickstart_program_runs(session):
    """README's first command, less its `pip install .` (this checkout is on PYTHONPATH)."""
    out = session.run(Block(ROOT / "README.md", 3, "sh", "run", None, "", "python examples/square.py\n"))
    assert "the square for job 9 is 81" in out
