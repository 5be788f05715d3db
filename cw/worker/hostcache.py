"""One copy per host: the executors of a host share the blobs they fetch.

::

    /dev/shm/cw-<uid>-<tag>/blobs/      in the user's private directory (cw.shmdir), 0700
        <digest>-<pidns>-<pid>          a blob, whole, kept by the executor <pid>:
                                        mapped copy-on-write by each executor
        <digest>.part                   one executor fetching it: the others wait for it

The first executor of a host that lacks a blob creates ``<digest>.part``
(``O_EXCL``: one wins), fetches the blob (directly or through the master,
``cw.worker.fetch``), writes it there and renames it after itself. An
executor that finds the blob maps it without a fetch; one that finds only
``.part`` waits for it (a ``.part`` older than ``STALE_SECONDS`` is a
fetcher that died: it is taken over). A file is used only if it is a
regular file of this user (``shm.open_ours``). The executor that kept a
file removes it when it exits; any executor removes those of executors
that died, those no executor loaded for ``IDLE_SECONDS``, and the oldest
past ``max_bytes``. An executor that maps one keeps its pages however the
file goes.
``CW_SHM=0`` (no shared memory) turns it off: each executor fetches for
itself, as when the directory is not this user's alone. A client of the
host writes its own blobs there the same way (``blobs.place_copy``, named after
the client, which removes them), and its executors need not fetch at all.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Optional

from .. import blobs, shm
from ..cluster import pid_alive

log = logging.getLogger(__name__)

IDLE_SECONDS = 60.0
STALE_SECONDS = blobs.FETCH_SECONDS
TIDY_SECONDS = 5.0


class HostCache:
    def __init__(self, max_bytes: int, where: Optional[Path] = None) -> None:
        self.dir = where
        self.max_bytes = max_bytes
        self.claims: dict[bytes, int] = {}  # blobs this executor fetches for the host: their .part's fd
        self.published: list[Path] = []  # the host's copies this executor keeps (and removes at exit)
        self.tidied = 0.0

    @classmethod
    def here(cls) -> "HostCache":
        """This host's, bounded as an executor's cache of fetched blobs."""
        from .. import serialize

        return cls(serialize.fetched.max_bytes, blobs.host_directory())

    def open(self, key: bytes) -> Optional[int]:
        """A descriptor of the host's copy of a blob, or None."""
        if self.dir is None:
            return None
        prefix = key.hex() + "-"
        with os.scandir(self.dir) as entries:
            names = [e.path for e in entries if e.name.startswith(prefix) and _NAME.fullmatch(e.name)]
        for path in names:
            fd = shm.open_ours(path)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.utime(fd)  # in use: not idle
                return fd
        return None

    def claim(self, key: bytes) -> bool:
        """Whether this executor fetches ``key`` for the host (no one else
        is, or the one who was died); False while another one fetches it."""
        if self.dir is None:
            return True
        part, _ = blobs.copy_paths(self.dir, key)
        for _ in range(2):
            try:
                self.claims[key] = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                           | os.O_CLOEXEC, 0o600)
                return True
            except FileExistsError:
                try:
                    st = part.lstat()
                except OSError:
                    continue  # it became the blob, or was given up: look again
                if time.time() - st.st_mtime < STALE_SECONDS or st.st_uid != os.getuid():
                    return False
                part.unlink(missing_ok=True)  # its fetcher died: take it over
            except OSError as e:
                log.debug("no host copy of %s: %s", key.hex(), e)
                return True
        return False

    def publish(self, key: bytes, data: object, written: bool = False) -> Optional[int]:
        """Write a blob this executor fetched for the host (``written``: it
        landed in the claim's file already); its descriptor (the host's
        copy), or None if it holds no claim or the write failed."""
        fd = self.claims.pop(key, None)
        if fd is None or self.dir is None:
            return None
        part, final = blobs.copy_paths(self.dir, key)
        try:
            if not written:
                blobs.write_all(fd, data)
            os.rename(part, final)
            self.published.append(final)
            return fd
        except OSError as e:  # full: the others fetch it themselves
            log.info("cannot keep a host copy of blob %s: %s", key.hex(), e)
            os.close(fd)
            part.unlink(missing_ok=True)
            return None

    def abandon(self, key: bytes) -> None:
        """The fetch failed: let another executor try."""
        fd = self.claims.pop(key, None)
        if fd is not None and self.dir is not None:
            os.close(fd)
            blobs.copy_paths(self.dir, key)[0].unlink(missing_ok=True)

    def close(self) -> None:
        """This executor exits: the copies it kept go (those mapping them keep their pages)."""
        for key in list(self.claims):
            self.abandon(key)
        for path in self.published:
            path.unlink(missing_ok=True)
        self.published.clear()

    def tidy(self, now: float) -> None:
        """Remove the copies of processes that died, those idle for
        ``IDLE_SECONDS``, then the oldest past ``max_bytes``; and the
        ``.part`` of a fetcher or client that died writing it."""
        if self.dir is None or now - self.tidied < TIDY_SECONDS:
            return
        self.tidied = now
        files, wall, ns = [], time.time(), shm.pid_namespace()
        with os.scandir(self.dir) as scan:
            entries = list(scan)
        for entry in entries:
            m = _NAME.fullmatch(entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            if m is None:
                if _PART.fullmatch(entry.name) and wall - st.st_mtime >= STALE_SECONDS:
                    _unlink(entry.path)
                continue
            if int(m.group(2)) == ns and not pid_alive(int(m.group(3))) or wall - st.st_mtime >= IDLE_SECONDS:
                _unlink(entry.path)
            else:
                files.append((st.st_mtime, st.st_size, entry.path))
        files.sort()
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= self.max_bytes:
                break
            _unlink(path)
            total -= size


_NAME = re.compile(r"([0-9a-f]{64})-(\d+)-(\d+)")  # digest, pid namespace, the process that keeps it
_PART = re.compile(r"[0-9a-f]{64}\.part")  # one being written


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
