"""The two-user test bed: a cluster's owner and another local user (the
attacker) on one machine, both unprivileged, as on a SLURM login node.

Made by root: two system users, a bed directory (0711) holding one home
each (0700), and traverse rights (an ACL entry naming only these users) on
the directories above the Python interpreter and the checkout, so that both
can run ``python -m cw...`` from this tree. Everything is undone at the end:
the users' processes are stopped, their files in /dev/shm removed, the ACL
entries and the users deleted.
"""
from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from beds import unavailable

ROOT = Path(__file__).resolve().parent.parent.parent
NAMES = ("cwbed-owner", "cwbed-other")


def why_not() -> str | None:
    return unavailable("two local users", ("setpriv", "useradd", "userdel", "setfacl"),
                       "util-linux passwd acl")


class Unavailable(Exception):
    """The bed cannot be made on this machine (said as the tests' skip reason)."""


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    started: list[subprocess.Popen] = field(default_factory=list)

    @property
    def cw_home(self) -> Path:
        return self.home / ".cw"

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(self.home),
                "USER": self.name, "LANG": "C.UTF-8", "PYTHONPATH": str(ROOT),
                "CW_HOME": str(self.cw_home), "CW_LAUNCHER": "local", **extra}

    def argv(self, args: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--", *args]

    def popen(self, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(args), env=self.env(**(env or {})), cwd=self.home,
                                stdin=subprocess.DEVNULL, **kw)
        self.started.append(proc)
        return proc

    def run(self, args: list[str], env: dict | None = None, timeout: float = 60):
        return subprocess.run(self.argv(args), env=self.env(**(env or {})), cwd=self.home,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def python(self, code: str, *args: str, env: dict | None = None, timeout: float = 60):
        """Run ``code`` as this user's program (written to a file of theirs)."""
        script = self.home / f"prog-{secrets.token_hex(4)}.py"
        script.write_text(code)
        os.chown(script, self.uid, self.gid)
        return self.run([sys.executable, str(script), *args], env=env, timeout=timeout)

    def processes(self) -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["uids"])
                if p.info["uids"] and p.info["uids"].real == self.uid]

    def make(self, path: Path, mode: int = 0o700) -> Path:
        """A directory of this user's, as they would make it."""
        path.mkdir(mode=mode)
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)
        return path

    def stop_all(self, grace: float = 10.0) -> list[str]:
        """End what this user runs: SIGTERM, then SIGKILL what did not end
        within ``grace``. Returns the processes that needed the SIGKILL."""
        procs = self.processes()
        for p in procs:
            try:
                p.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, stubborn = psutil.wait_procs(procs, timeout=grace)
        for p in stubborn:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(stubborn, timeout=5)
        for proc in self.started:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for pipe in (proc.stdout, proc.stderr):
                if pipe:
                    pipe.close()
        self.started.clear()
        return [f"pid {p.pid} of {self.name}" for p in stubborn]

    def remove_shm(self) -> None:
        for entry in os.scandir("/dev/shm"):
            try:
                if entry.stat(follow_symlinks=False).st_uid != self.uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


class Bed:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.acl: list[tuple[Path, str]] = []
        self.users: list[User] = []

    @property
    def tmp(self) -> Path:
        return self.base / "tmp"

    def up(self) -> tuple[User, User]:
        self.base.mkdir(mode=0o711)
        os.chmod(self.base, 0o711)
        self.tmp.mkdir()
        os.chmod(self.tmp, 0o1777)  # like /tmp: anyone may create, only owners remove
        for name in NAMES:
            subprocess.run(["userdel", name], capture_output=True)  # a crashed run's
            subprocess.run(["useradd", "--system", "--no-create-home", "--user-group",
                            "--home-dir", str(self.base / name), "--shell", "/usr/sbin/nologin", name],
                           check=True, capture_output=True)
            pw = pwd.getpwnam(name)
            user = User(name, pw.pw_uid, pw.pw_gid, self.base / name)
            user.make(user.home)
            self.users.append(user)
        for path in (Path(os.path.realpath(sys.executable)), ROOT / "cw" / "__init__.py"):
            self._grant_traverse(path)
        return self.users[0], self.users[1]

    def _grant_traverse(self, path: Path) -> None:
        for directory in reversed(path.parents):
            if os.stat(directory).st_mode & 0o001:
                continue
            for user in self.users:
                done = subprocess.run(["setfacl", "-m", f"u:{user.name}:x", str(directory)],
                                      capture_output=True, text=True)
                if done.returncode != 0:
                    why = done.stderr.strip()
                    raise Unavailable(f"cannot let the bed's users through {directory}: {why}")
                self.acl.append((directory, user.name))

    def down(self) -> list[str]:
        left = []
        for user in self.users:
            left += user.stop_all()
            user.remove_shm()
        for directory, name in self.acl:
            subprocess.run(["setfacl", "-x", f"u:{name}", str(directory)], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        for user in self.users:
            subprocess.run(["userdel", user.name], capture_output=True)
        return left
