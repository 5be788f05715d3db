"""The SSH test bed's facts and helpers (tests/ssh/sshbox.sh), shared by its tests."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil
from beds import unavailable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SSHBOX = HERE / "sshbox.sh"
BOX = Path(os.environ.get("SSHBOX_DIR", "/tmp/cw-sshbox"))
NET = "10.199.78"
NAMESPACES = ("cwssh1", "cwssh2")


@dataclass(frozen=True)
class Box:
    """What the test bed offers: two machines, keys, trusted host keys."""

    dir: Path
    addresses: tuple = (f"{NET}.11", f"{NET}.12")  # cwssh2 does not share $BOX/homes
    unreachable: str = f"{NET}.99"  # on the bridge, but no machine has it

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def wrong_key(self) -> Path:
        return self.dir / "wrong_ed25519"

    @property
    def ssh_options(self) -> list[str]:
        opts = [f"UserKnownHostsFile={self.dir / 'known_hosts'}", "StrictHostKeyChecking=yes",
                "GlobalKnownHostsFile=/dev/null"]
        return [arg for o in opts for arg in ("--ssh-option", o)]


def why_not() -> str | None:
    return unavailable("network namespaces, one sshd per machine",
                       ("sshd", "ssh", "ssh-keygen", "ip", "nsenter", "unshare"),
                       "openssh-server openssh-client iproute2 util-linux")


def netns_processes(ns: str) -> list[psutil.Process]:
    """Every process in the network namespace ``ns`` (one "machine")."""
    inode = f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]"
    found = []
    for proc in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") == inode:
                found.append(proc)
        except OSError:
            pass
    return found


def cw_processes() -> list[str]:
    """cw processes on any of the machines: ``ns: pid command``."""
    found = []
    for ns in NAMESPACES:
        for proc in netns_processes(ns):
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if "cw." in cmd:
                found.append(f"{ns}: {proc.pid} {cmd}")
    return found
