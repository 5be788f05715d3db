"""The container test bed: rootful podman and a cw image built from docker/Dockerfile.

The image is built once per session by ``docker/testbed.sh build`` (the
script a person runs too): a Debian base image made with debootstrap (kept
between sessions, so made once per machine), cw's dependencies as wheels
from this machine, and a build with no network. Every container a test
starts runs from that image, so "no container of that image left" is the
check that a test cleaned up.
"""
from __future__ import annotations

import faulthandler
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from beds import unavailable

ROOT = Path(__file__).resolve().parents[2]
TESTBED = ROOT / "docker" / "testbed.sh"
IMAGE = "localhost/cw-test:latest"
BASE = "localhost/cw-testbed-base:bookworm"


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {done.stderr}")
    return done


def ours() -> list[str]:
    """Every container of the test image, running or not."""
    out = podman("ps", "--all", "--filter", f"ancestor={IMAGE}", "--format", "{{.Names}}").stdout
    return out.split()


def _why_not() -> str | None:
    reason = unavailable("rootful podman", ("podman", "runc"), "podman runc debootstrap")
    if reason:
        return reason
    if not shutil.which("debootstrap") and not os.path.exists("/usr/sbin/debootstrap"):
        if subprocess.run(["podman", "image", "exists", BASE], timeout=60).returncode != 0:
            return "no debootstrap to make the base image: apt-get install debootstrap"
    return None


@pytest.fixture(scope="session")
def cw_image(request):
    """The image's name, built from this checkout for this session."""
    reason = _why_not()
    if reason:
        pytest.skip(f"container test bed unavailable: {reason}")
    # The build takes minutes the first time on a machine (debootstrap), past
    # faulthandler_timeout; its own timeout bounds it, so no stack dump.
    faulthandler.cancel_dump_traceback_later()
    done = subprocess.run([str(TESTBED), "build", IMAGE], capture_output=True, text=True, timeout=420)
    dump_after = float(request.config.getini("faulthandler_timeout") or 0)
    if dump_after > 0:
        faulthandler.dump_traceback_later(dump_after, file=sys.__stderr__)
    if done.returncode != 0:
        pytest.fail(f"testbed build failed:\n{done.stdout}\n{done.stderr}")
    yield IMAGE
    for name in ours():
        podman("rm", "--force", name, check=False)
    podman("rmi", "--force", IMAGE, check=False)


class Containers:
    """Runs containers of the test image and removes every one at teardown."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: list[str] = []

    def start(self, *args: str, env: dict | None = None) -> str:
        """``podman run --detach`` on the host network; returns the name."""
        name = f"cwtest-{os.urandom(4).hex()}"
        self.names.append(name)
        podman("run", "--detach", "--name", name, "--net=host", *_env(env), *args, self.image)
        return name

    def run(self, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """``podman run`` in the foreground, to its end."""
        name = f"cwtest-{os.urandom(4).hex()}"
        self.names.append(name)
        return podman("run", "--rm", "--name", name, "--net=host", *_env(env), *args, self.image,
                      timeout=timeout, check=False)

    def state(self, name: str) -> tuple[str, int]:
        out = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name).stdout.split()
        return out[0], int(out[1])

    def cleanup(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", name, check=False)


def _env(env: dict | None) -> list[str]:
    return [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]


@pytest.fixture
def containers(cw_image):
    box = Containers(cw_image)
    yield box
    box.cleanup()
    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.5)  # `--rm` containers (SLURM's) go once their command ended
    left = ours()
    for name in left:
        podman("rm", "--force", "--time", "0", name, check=False)
    assert left == [], f"the test left containers behind: {left}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
