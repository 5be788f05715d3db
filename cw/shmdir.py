"""This user's private directory in ``/dev/shm``, under a name no other user can guess.

::

    $CW_HOME/.shm-secret          32 random bytes (hex), mode 0600, made once
    /dev/shm/cw-<uid>-<tag>/      mode 0700; tag = sha256(secret, boot id), 16 hex digits
        cw-<pidns>-<pid>-<token>  big buffers (cw.shm)
        lanes/lane-<pidns>-<pid>  lane sockets (cw.lanes)
        blobs/                    the host's copies of blobs (cw.worker.hostcache)

``/dev/shm`` is every user's. A fixed name (``/dev/shm/cw-lanes-<uid>``) can
be made first by another user, which turned lanes and the host blob cache
off; files named like cw's in ``/dev/shm`` itself made every start sweep
through them. A name derived from a secret only this user can read cannot
be taken first, and nobody else can list or enter the directory, so a start
sweeps only cw's own files. The boot id changes the name at each boot (a
lane socket's path is visible to every user in ``/proc/net/unix``). Every
cw process of this user with the same ``$CW_HOME`` on this host (clients,
executors, in a container or not) finds the same directory without
configuration.

Where the directory cannot be had, ``directory`` says why, in words that
never show the tag (``cw status`` shows them); shared memory, lanes and the
host blob cache are then off.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import Optional

from .cluster import home

log = logging.getLogger(__name__)

ROOT = "/dev/shm"
SECRET = ".shm-secret"
_HEX = re.compile(rb"[0-9a-f]{64}\s*")
_found: dict[str, tuple[Optional[Path], str]] = {}  # CW_HOME -> (directory, or None and why)


def directory() -> tuple[Optional[Path], str]:
    """This user's private directory (made 0700), or None and why not."""
    key = os.environ.get("CW_HOME", "")
    found = _found.get(key)
    if found is None:
        found = _found[key] = _make()
        if found[0] is None:
            log.warning("no shared memory, lanes or host blob cache: %s", found[1])
    return found


def subdirectory(name: str) -> tuple[Optional[Path], str]:
    """``name`` inside the private directory (made 0700), or None and why not."""
    root, why = directory()
    if root is None:
        return None, why
    path = root / name
    problem = _private(path)
    return (path, "") if problem is None else (None, problem)


def shown(path: object) -> str:
    """A path with its secret tag hidden, for what others may read (``cw status``)."""
    return re.sub(r"(/cw-\d+-)[0-9a-f]{16}", r"\1<secret>", str(path))


def path_for(where: Path) -> Optional[Path]:
    """The private directory of the CW_HOME ``where``, if it has a secret
    yet (nothing is made, nothing checked)."""
    try:
        return _named((where / SECRET).read_bytes()[:64])
    except OSError:
        return None


def remove_if_empty(where: Path) -> None:
    """Remove the private directory of the CW_HOME ``where`` if nothing is
    left in it (that CW_HOME is going away: its secret would name it no more)."""
    root = path_for(where)
    for path in (root / "lanes", root / "blobs", root) if root is not None else ():
        try:
            path.rmdir()
        except OSError:
            pass  # in use, or gone


def _named(secret: bytes) -> Path:
    with open("/proc/sys/kernel/random/boot_id", "rb") as f:
        boot = f.read().strip()
    tag = hashlib.sha256(b"cw-shm\0" + secret + b"\0" + boot).hexdigest()[:16]
    return Path(ROOT) / f"cw-{os.getuid()}-{tag}"


def _make() -> tuple[Optional[Path], str]:
    try:
        path = _named(_secret(home()))
    except ValueError as e:
        return None, str(e)
    except OSError as e:
        return None, f"cannot read or make {home() / SECRET}: {e.strerror or e}"
    problem = _private(path)
    return (None, problem) if problem is not None else (path, "")


def _private(path: Path) -> Optional[str]:
    """None once ``path`` is a directory of this user's alone; else why not."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        return f"cannot make {shown(path)}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{shown(path)} is not a directory"
    if st.st_uid != os.getuid():
        return f"{shown(path)} is owned by uid {st.st_uid}, not {os.getuid()}"
    if st.st_mode & 0o077:
        return f"{shown(path)} has mode {oct(st.st_mode & 0o777)}, not 0700"
    return None


def _secret(where: Path) -> bytes:
    """The secret in ``where/.shm-secret``, made there first if absent.
    Raises ValueError naming what is wrong (a file others can read or swap)."""
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = where.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ValueError(f"{where} (CW_HOME) is not this user's alone (owner uid {st.st_uid}, "
                         f"mode {oct(st.st_mode & 0o777)}); fix it with: chmod go-w {where}")
    path = where / SECRET
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            _create(path)
            continue
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise ValueError(f"{path} is not a file of this user's alone (mode 0600); "
                                 f"remove it, cw makes a new one")
            data = f.read(100)
        if not _HEX.fullmatch(data):
            raise ValueError(f"{path} is malformed; remove it, cw makes a new one")
        return data[:64]
    raise ValueError(f"cannot read {path}")


def _create(path: Path) -> None:
    """Write a new secret; a racing process's wins if it was first (``link``
    fails on an existing name, so no reader sees a half-written file)."""
    tmp = path.with_name(f"{SECRET}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32).hex().encode() + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
