"""The machine side of the SSH launcher: ``python -m cw.launch.remote ACTION``.

``cw ssh`` runs this over SSH on each machine, with a JSON request on stdin
and a JSON answer on stdout, so no value ever goes through a remote shell
unquoted::

    head ──ssh──► cd CWD; PYTHON -m cw.launch.remote start   (request on stdin)
                    ├─ shared cluster directory? (the head's probe file is there)
                    │     yes: use it as it is      no: write the workers' key to ~/.cw/ssh/TAG
                    ├─ spawn python -m cw.worker ... in a session of its own
                    │     (log in <cluster>/logs/ssh-worker-<machine>-*.log)
                    └─ record pid, create time, token in <cluster>/ssh/<machine>/

Records carry the token of the ``cw ssh start`` that made them. ``stop``
ends exactly the recorded processes with that token (checked by create time)
and their executors, and removes a private home that start wrote; ``status``
says which are alive.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

import psutil

from .. import shmdir
from ..cluster import CREATE_TIME_SLACK
from .local import _terminate_trees

PRIVATE_ROOT = "~/.cw/ssh"  # cluster homes of machines that do not share the head's
MARKER = ".cw-ssh-private"  # written by start: only such a directory is ever removed
# What a worker needs, and no more: the workers' key pair, which can only
# serve jobs (the master refuses a client's messages from it), and the
# master's public key. Never a client's secret, never the master's.
KEY_FILES = ("master.key", "worker/worker.key", "worker/worker.key_secret")


def _shared(probe: Optional[str], token: str) -> bool:
    """Does this machine see the head's cluster directory (its probe file)?"""
    try:
        return probe is not None and Path(probe).read_text() == token
    except OSError:
        return False


def _write_private(home: Path, cluster: str, token: str, keys: Optional[dict]) -> None:
    """A private cluster home: directories 0700, files 0600."""
    for path in (home, home / cluster, home / cluster / "keys", home / cluster / "logs"):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    _write_private_file(home / MARKER, token)
    for name, text in (keys or {}).items():
        if name not in KEY_FILES:
            raise ValueError(f"unexpected key file {name!r}")
        path = home / cluster / "keys" / name
        path.parent.mkdir(mode=0o700, exist_ok=True)
        _write_private_file(path, text)


def _write_private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _state_dir(home: Path, cluster: str, mid: str) -> Path:
    return home / cluster / "ssh" / mid


def start(req: dict) -> dict:
    shared = _shared(req.get("probe"), req["token"])
    home = Path(req["head_home"] if shared else Path(req["private_home"]).expanduser()).absolute()
    if not shared:
        _write_private(home, req["cluster"], req["token"], req.get("keys"))
    state = _state_dir(home, req["cluster"], req["mid"])
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs = home / req["cluster"] / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    log = logs / f"ssh-worker-{req['mid']}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    env = {**os.environ, "CW_HOME": str(home), "CW_CLUSTER": req["cluster"]}
    # A session of its own: the worker outlives this SSH session, and a
    # hang-up of the session does not reach it.
    pid = os.posix_spawn(
        sys.executable, [sys.executable, "-m", "cw.worker", *req["worker"]], env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
    )
    record = {"pid": pid, "create_time": psutil.Process(pid).create_time(), "log": str(log),
              "token": req["token"]}
    _write_private_file(state / f"worker-{pid}.json", json.dumps(record))
    return {**record, "hostname": socket.gethostname(), "home": str(home), "shared": shared}


def _records(req: dict) -> list[tuple[Path, dict]]:
    """This cluster's records on this machine (its token), in any of its homes."""
    out = []
    for home in dict.fromkeys(Path(h).expanduser().absolute() for h in req["homes"]):
        state = _state_dir(home, req["cluster"], req["mid"])
        for path in sorted(state.glob("worker-*.json")) if state.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and isinstance(record.get("pid"), int) \
                    and record.get("token") == req["token"]:
                out.append((path, record))
    return out


def _process(record: dict) -> Optional[psutil.Process]:
    """The recorded process if it still runs (a reused pid is not it)."""
    try:
        proc = psutil.Process(record["pid"])
        if abs(proc.create_time() - float(record.get("create_time", 0))) > CREATE_TIME_SLACK:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.Error:
        return None


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4000))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


def status(req: dict) -> dict:
    workers = []
    for _, record in _records(req):
        alive = _process(record) is not None
        workers.append({"pid": record["pid"], "alive": alive, "log": record.get("log"),
                        "tail": "" if alive or not req.get("tail") else _tail(record.get("log", ""))})
    return {"hostname": socket.gethostname(), "workers": workers}


def stop(req: dict) -> dict:
    records = _records(req)
    procs = [p for p in (_process(r) for _, r in records) if p is not None]
    # SIGTERM: workers drain and hand their jobs back; what outlives the
    # timeout is killed with its executors.
    _terminate_trees(procs, float(req.get("timeout", 30)))
    for path, _ in records:
        path.unlink(missing_ok=True)
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()  # only once empty: another machine's records may share it
            except OSError:
                pass
    # ``keep_homes``: other machines' workers may still write to a home this
    # one shares (an NFS home): the head asks again once all are stopped.
    removed = [] if req.get("keep_homes") else \
        [str(home) for home in map(Path, req["homes"]) if _remove_private(home, req["token"])]
    return {"stopped": len(procs), "removed": removed}


def _remove_private(home: Path, token: str) -> bool:
    """Remove a private cluster home, only one that ``start`` made for this cluster."""
    home = home.expanduser().absolute()
    root = Path(PRIVATE_ROOT).expanduser().absolute()
    try:
        if home.parent != root or (home / MARKER).read_text() != token:
            return False
    except OSError:
        return False
    shmdir.remove_if_empty(home)  # its workers are gone: nothing in /dev/shm outlives them
    shutil.rmtree(home, ignore_errors=True)
    try:
        root.rmdir()  # ~/.cw/ssh, once no cluster uses it
    except OSError:
        pass
    return not home.exists()


ACTIONS = {"start": start, "stop": stop, "status": status}


def main(argv: Optional[list] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ACTIONS:
        print(f"usage: python -m cw.launch.remote {{{'|'.join(ACTIONS)}}} < request.json", file=sys.stderr)
        return 2
    try:
        request: Any = json.load(sys.stdin)
        answer = ACTIONS[args[0]](request)
    except Exception as e:  # the head reports it for this machine
        print(f"cw.launch.remote {args[0]} failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
