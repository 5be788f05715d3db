"""The fenced blocks of README.md and docs/, and how each one is marked.

A fence's info string says what the block is, for the reader and for
``test_docs.py`` alike:

    ```python run            run it (python), in document order
    ```sh run                run it (bash -eu -o pipefail)
    ```sh run=slurm          run it on a test bed: slurm, ssh or container
    ```sh norun: REASON      a command that no test runs, and why
    ```text / ```console     output, file contents, pictures: never run

A block in python, sh, bash or shell must carry one of the first four
marks; any other language must carry none; a fence without a language is
an error. So no command can sit in the docs without a test, or a stated
reason, behind it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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
