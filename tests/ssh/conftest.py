"""Fixtures of the SSH test bed: sshd "machines" in network namespaces (sshbox.sh)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cw import shmdir

from .sshbed import BOX, NAMESPACES, ROOT, SSHBOX, Box, netns_processes, why_not


@pytest.fixture(scope="session")
def sshbox():
    reason = why_not()
    if reason:
        pytest.skip(f"SSH test bed unavailable: {reason}")
    env = {**os.environ, "SSHBOX_DIR": str(BOX)}
    up = subprocess.run([str(SSHBOX), "up"], capture_output=True, text=True, timeout=120, env=env)
    if up.returncode != 0:
        subprocess.run([str(SSHBOX), "down"], capture_output=True, timeout=120, env=env)
        pytest.fail(f"sshbox up failed:\n{up.stdout}\n{up.stderr}")
    yield Box(BOX)
    down = subprocess.run([str(SSHBOX), "down"], capture_output=True, text=True, timeout=120, env=env)
    assert down.returncode == 0, down.stderr
    assert not any(Path("/run/netns", ns).exists() for ns in NAMESPACES)


@pytest.fixture
def ssh_home(sshbox, cw_home, monkeypatch):
    """A CW_HOME that cwssh1 shares and cwssh2 does not; nothing left behind after."""
    home = BOX / "homes" / cw_home.parent.name
    monkeypatch.setenv("CW_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    yield home
    if (home / "default" / "ssh.json").exists() or (home / "default" / "master.json").exists():
        subprocess.run([sys.executable, "-m", "cw.cli", "ssh", "stop", "--timeout", "10"],
                       capture_output=True, timeout=120)
    leaked = [p for ns in NAMESPACES for p in netns_processes(ns) if p.name() != "sshd"]
    for proc in leaked:
        proc.kill()
    shmdir.remove_if_empty(home)  # its private /dev/shm directory (cw.shmdir), once empty
    shutil.rmtree(home, ignore_errors=True)
    assert not leaked, f"processes left on the machines: {leaked}"
