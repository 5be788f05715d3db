"""Every command and code block of README.md and docs/ runs, so the docs cannot drift.

The marks and the ``Session`` the blocks run in are in ``tests/docblocks.py``.
A file's local ``run`` blocks run here, in document order, in one session.
Blocks that need a test bed (``run=slurm``, ``run=container``) run in that
bed's suite, beside the bed's other tests; ``BED_TESTS`` names the test that
runs each file's, and ``test_every_bed_block_has_its_test`` holds the list
to the docs.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from docblocks import BEDS, ROOT, Block, MarkError, Session, blocks, doc_files, parse_info

BED_TESTS = {  # file -> (its bed, the test that runs its bed blocks)
    "docs/slurm.md": ("slurm", "tests/slurm/test_slurm.py::test_the_slurm_guide_runs"),
    "docs/containers.md": ("container", "tests/container/test_image.py::test_the_containers_guide_runs"),
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
    assert not errors, ("fenced blocks without a valid mark (see tests/docblocks.py):\n"
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


def test_every_bed_block_has_its_test():
    """Each file with ``run=BED`` blocks is run by a test of that bed's suite."""
    found = {_id(b.path): b.bed for b in _all_blocks() if b.mode == "run" and b.bed}
    assert found == {path: bed for path, (bed, _) in BED_TESTS.items()}
    for bed, test in BED_TESTS.values():
        module, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / module).read_text(), re.M), f"{test} is missing"
        assert bed in BEDS and f"tests/{bed}/" in module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quickstart_program_runs(session):
    """README's first command, less its `pip install .` (this checkout is on PYTHONPATH)."""
    out = session.run(Block(ROOT / "README.md", 3, "sh", "run", None, "", "python examples/square.py\n"))
    assert "the square for job 9 is 81" in out
