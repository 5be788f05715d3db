"""Fixtures of the two-user test bed (bed.py)."""
from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import master_json

from .bed import Bed, Unavailable, User, why_not


@pytest.fixture(scope="session")
def bed():
    reason = why_not()
    if reason:
        pytest.skip(f"two-user test bed unavailable: {reason}")
    bed = Bed(Path("/tmp") / f"cwbed-{secrets.token_hex(4)}")
    try:
        try:
            owner, other = bed.up()
        except Unavailable as e:
            pytest.skip(f"two-user test bed unavailable: {e}")
        check = owner.run([sys.executable, "-c", "import cw, zmq, numpy, psutil"])
        if check.returncode != 0:  # e.g. an interpreter they may not read: said, not failed
            pytest.skip(f"two-user test bed unavailable: its users cannot run cw from this tree: "
                        f"{check.stderr.strip().splitlines()[-1:]}")
        yield bed
    finally:
        left = bed.down()
        assert not left, f"processes that needed SIGKILL at the bed's end: {left}"


@pytest.fixture
def users(bed):
    """(owner, other); whatever a test leaves running is stopped after it,
    and a process that ignores SIGTERM fails the test."""
    owner, other = bed.users
    yield owner, other
    left = []
    for user in (owner, other):
        left += user.stop_all()
        user.remove_shm()
        for path in [*user.home.iterdir(), *bed.tmp.iterdir()]:
            subprocess.run(["rm", "-rf", str(path)])
    assert not left, f"left running past SIGTERM: {left}"


def start_master(owner: User, *extra: str, env: dict | None = None,
                 files: int | None = None) -> tuple[subprocess.Popen, int]:
    """The owner's master on a free port of 127.0.0.1, as `python -m cw.master`
    starts it (under `ulimit -n FILES` if given)."""
    limit = ["prlimit", f"--nofile={files}:{files}", "--"] if files else []
    proc = owner.popen([*limit, sys.executable, "-m", "cw.master", "--host", "127.0.0.1", "--port", "0",
                        *extra], env=env)
    info = master_json(proc, owner.cw_home / "default" / "master.json", "the owner's master.json")
    return proc, info["port"]


def start_worker(owner: User, port: int, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return owner.popen([sys.executable, "-m", "cw.worker", "127.0.0.1", "--port", str(port), "--procs", "1",
                        *extra], env=env)
