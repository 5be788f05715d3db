"""Big buffers through shared memory when client and executor share a host.

::

    client: numpy array ──os.write──► /dev/shm/cw-<uid>-<tag>/cw-<pidns>-<pid>-<token>
            SUBMIT carries a reference frame (b"cw-shm:" + file name)
    executor: same host key? ──► mmap, copy-on-write (no copy, no master)
              else ──► the job bounces: the client sends it again inline

A result's big buffers travel the same way back when the job's context says
the client's host key equals the executor's. The master never sees the
bytes, only a reference of a few dozen bytes, and ``--max-message-size``
does not limit them.

Whoever maps a file first claims it: it renames the file to a *spare* name
of its own (``cw-<pidns>-<pid>-s-<token>``), so no other process can map it
(a job requeued meanwhile bounces, and its client writes a fresh file).
Once its mapping is gone, the file is a spare: the next big buffer this
process sends overwrites it, which costs half as much as filling fresh
pages, and renames it to a job file. Spares are few (``SPARE_FILES``, ``SPARE_BYTES``), short-lived
(``SPARE_SECONDS``) and removed when their process exits.

The *host key* names what two processes must share for a file one writes to
be the same file the other reads: the boot, the ``/dev/shm`` filesystem, the
pid namespace (file names carry pids, see ``sweep``) and the user's private
directory there (``cw.shmdir``: 0700, under a name only the user can derive,
so no other user can see, plant or take a name in it). Files are named
after the process that must remove them: the client, for its arguments
(when the job is done) and for its results (when it reads them). A file
whose process has died is removed by the next cw process of the same
namespace that starts using shared memory.

``CW_SHM=0`` turns the path off; a full ``/dev/shm`` (64 MiB in a default
Docker container) makes a buffer travel inline instead.
"""
from __future__ import annotations

import atexit
import logging
import mmap
import os
import re
import secrets
import stat
import threading
import time
import weakref
from typing import Any, Iterable, Optional

from . import shmdir
from .cluster import pid_alive
from .errors import CWError

log = logging.getLogger(__name__)

ROOT = shmdir.ROOT  # the files are in our private directory there (cw.shmdir)
SHARE_FROM = 1 << 20  # smaller out-of-band buffers are cheaper as frames
MARK = b"cw-shm:"
_NAME = re.compile(r"cw-(\d+)-(\d+)-[0-9a-f]{32}")  # a job's file, named after its remover
_ANY = re.compile(r"cw-(\d+)-(\d+)-(?:s-)?[0-9a-f]{32}")  # a job's file or a spare
SPARE_FILES = 4  # spare files a process keeps at most,
SPARE_BYTES = 1 << 30  # in all this big,
SPARE_SECONDS = 10.0  # each for this long unused


class DataUnreachable(CWError):
    """An executor cannot map the shared-memory file a job's arguments are
    in: it is on another host (or in another container), and the client
    resends the job with its data inline; or another executor claimed the
    file for an earlier run of the job, and the client writes a fresh one."""


class Ref(bytes):
    """A payload frame naming a shared-memory file instead of holding bytes;
    ``source``, the buffer written there, is what a resend sends once the
    file is gone."""

    path: str
    source: memoryview


class _Spares:
    """Files this process mapped and no longer does: their pages are there
    already. Thread-safe (a mapping dies in whichever thread drops it)."""

    def __init__(self) -> None:
        # Reentrant: a mapping may die (and call put) in a garbage collection
        # that an allocation under the lock set off.
        self.lock = threading.RLock()
        self.files: list[tuple[str, int, float]] = []  # (path, size, since), oldest first
        self.mapped: set[str] = set()  # claimed files mapped now
        self.forks = 0  # forks since start: a child may still map what was mapped then
        self.closed = False  # exiting: no more spares

    def watch(self, mapping: mmap.mmap, path: str) -> None:
        """Note a file this process mapped; ``put`` it when the mapping dies."""
        with self.lock:
            self.mapped.add(path)
            weakref.finalize(mapping, self.put, path, len(mapping), os.getpid(), self.forks)

    def put(self, path: str, size: int, pid: int, forks: int) -> None:
        """A mapping died: its file becomes a spare, unless a forked child
        may map it still (then it goes), or it is a parent's (left alone)."""
        if pid != os.getpid():
            return  # a mapping inherited by a forked child: the parent's file
        with self.lock:
            self.mapped.discard(path)
            if forks != self.forks or self.closed:
                _unlink(path)
                return
            self.files.append((path, size, time.monotonic()))
            while len(self.files) > SPARE_FILES or sum(f[1] for f in self.files) > SPARE_BYTES:
                _unlink(self.files.pop(0)[0])

    def take(self, size: int) -> Optional[tuple[str, int]]:
        """The spare that fits ``size`` best: the smallest big enough, else the largest."""
        with self.lock:
            if not self.files:
                return None
            fits = [f for f in self.files if f[1] >= size]
            best = min(fits, key=lambda f: f[1]) if fits else max(self.files, key=lambda f: f[1])
            self.files.remove(best)
            return best[0], best[1]

    def tidy(self, now: float) -> None:
        if not self.files:
            return
        with self.lock:
            for f in [f for f in self.files if now - f[2] >= SPARE_SECONDS]:
                self.files.remove(f)
                _unlink(f[0])

    def clear(self) -> None:
        with self.lock:
            for f in self.files:
                _unlink(f[0])
            self.files.clear()

    def close(self) -> None:
        """At exit: remove the spares, and the files still mapped (their
        mappings last as long as the process)."""
        with self.lock:
            self.closed = True
            self.clear()
            for path in self.mapped:
                _unlink(path)
            self.mapped.clear()


_spares = _Spares()
atexit.register(_spares.close)


def _forked() -> None:
    _spares.forks += 1


def _forget_parents_spares() -> None:
    """In a forked child: the spares and mapped files it inherited are its parent's."""
    _spares.files, _spares.mapped, _spares.lock = [], set(), threading.RLock()


os.register_at_fork(after_in_parent=_forked, after_in_child=_forget_parents_spares)


def tidy() -> None:
    """Remove spare files unused for ``SPARE_SECONDS`` (call now and then)."""
    _spares.tidy(time.monotonic())


def drop_spares() -> None:
    """Remove every spare file of this process now."""
    _spares.clear()


def _identity() -> tuple[Optional[tuple], str]:
    """(host key, pid namespace, private directory), or None and why not."""
    if os.environ.get("CW_SHM", "1").strip().lower() in ("0", "no", "false", "off"):
        return None, "CW_SHM=0"
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError as e:
        return None, f"no shared memory here: {e}"
    root, why = shmdir.directory()
    if root is None:
        return None, why
    # The private directory, not /dev/shm: processes that share it see the
    # same files, and its inode says so without naming it.
    st = os.stat(root)
    return (f"{boot}:{st.st_dev}:{st.st_ino}:{pidns}:{os.getuid()}", pidns, str(root)), ""


_cached: Optional[tuple] = None
_checked: Optional[str] = None  # the CW_HOME the host key was found for
_why = ""


def host_key() -> Optional[str]:
    """This process's host key, or None where shared memory is off or missing."""
    global _cached, _checked, _why
    home = os.environ.get("CW_HOME", "")
    if home != _checked:  # once per process (tests change CW_HOME)
        _checked = home
        _cached, _why = _identity()
        if _cached is not None:
            sweep(_cached[1])
    return None if _cached is None else _cached[0]


def off_reason() -> str:
    """Why shared memory is off here (after ``host_key`` said None)."""
    return _why


def root() -> str:
    """This user's private directory (``cw.shmdir``), where the files are."""
    assert _cached is not None, "call host_key() first"
    return _cached[2]


def pid_namespace() -> int:
    """This process's pid namespace (its inode), part of its host key."""
    assert _cached is not None, "call host_key() first"
    return _cached[1]


def _new_path(owner: int, spare: bool = False) -> str:
    assert _cached is not None, "call host_key() first"
    return os.path.join(_cached[2], f"cw-{_cached[1]}-{owner}-{'s-' if spare else ''}{secrets.token_hex(16)}")


def export(buf: memoryview, owner: int) -> Any:
    """Write ``buf`` to a file that process ``owner`` will remove (a spare
    of ours if there is one); return its ``Ref``, or ``buf`` itself when
    the file cannot be written."""
    path = _new_path(owner)
    view = buf.cast("B")
    spare = _spares.take(len(view))
    try:
        if spare is not None:
            try:
                _write(spare[0], view, os.O_WRONLY, truncate=spare[1] > len(view))
                os.rename(spare[0], path)
            except OSError:
                _unlink(spare[0])
                spare = None
        if spare is None:
            _write(path, view, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except OSError as e:  # full (ENOSPC), or gone: this buffer travels inline
        log.debug("shared memory unavailable for %d bytes: %s", buf.nbytes, e)
        _unlink(path)
        return buf
    ref = Ref(MARK + os.path.basename(path).encode())
    ref.path, ref.source = path, buf
    return ref


def _write(path: str, view: memoryview, flags: int, truncate: bool = False) -> None:
    # os.write, not a mapping: the kernel fills the pages in one pass,
    # without a page fault for each of them.
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        if truncate:
            os.ftruncate(fd, len(view))
    finally:
        os.close(fd)


def bounced(sent: Iterable[Any]) -> bool:
    """Whether a job that came back UNREACHABLE (its executor could not map
    its data) was ``sent`` with data in shared memory, to send again inline."""
    return any(isinstance(f, Ref) for f in sent)


def is_ref(frame: Any) -> bool:
    return len(frame) < 256 and bytes(memoryview(frame)[:len(MARK)]) == MARK


def _path(frame: Any) -> str:
    name = bytes(memoryview(frame)[len(MARK):]).decode("ascii", "replace")
    if not _NAME.fullmatch(name):
        raise DataUnreachable(f"malformed shared-memory reference {name[:80]!r}")
    if host_key() is None:
        raise DataUnreachable(f"cannot open {name}: shared memory is off here ({_why})")
    return os.path.join(root(), name)


def attach(frame: Any) -> mmap.mmap:
    """Claim a referenced file and map it copy-on-write: writable, and the
    writes stay here. When the mapping is gone, the file is a spare."""
    path = _path(frame)
    mine = _new_path(os.getpid(), spare=True)
    try:
        os.rename(path, mine)  # atomic: only one process ever maps a file
    except OSError as e:
        raise DataUnreachable(f"cannot open {path}: {e.strerror}") from e
    fd = open_ours(mine)
    if fd is None:  # not a file of ours: never mapped, never run on
        _unlink(mine)
        raise DataUnreachable(f"cannot map {path}: not a regular file of this user")
    try:
        m = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except OSError as e:
        _unlink(mine)
        raise DataUnreachable(f"cannot map {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    _spares.watch(m, mine)
    return m


def open_ours(path: str, size: Optional[int] = None) -> Optional[int]:
    """A descriptor of ``path`` if it is a regular file of this user (of
    ``size`` bytes), else None. /dev/shm is every user's: a name we wrote
    and an executor claimed is free again, and another user may have put a
    link, a FIFO or a file of theirs there. Never followed, never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or size is not None and st.st_size != size:
        os.close(fd)
        return None
    return fd


def inline(frame: Any) -> Any:
    """A frame with the bytes in place of a reference to their file: the
    file's (as they were sent) if it is still ours, else the buffer's (as
    it is now)."""
    if not isinstance(frame, Ref):
        return frame
    fd = open_ours(frame.path, frame.source.nbytes)
    if fd is None:
        return frame.source
    with open(fd, "rb") as f:
        return f.read()


def reissue(frame: Any, owner: int) -> Any:
    """A frame with a reference to a fresh copy of its file's bytes."""
    return export(frame.source, owner) if isinstance(frame, Ref) else frame


def unclaimed(frames: Iterable[Any]) -> bool:
    """Whether a file we referenced is still where we wrote it: nobody
    could map (and so claim) it."""
    return any(isinstance(f, Ref) and _is_ours(f.path) for f in frames)


def _is_ours(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid()


def release(frames: Iterable[Any]) -> None:
    """Remove the files of the references among frames this process made."""
    for frame in frames:
        if isinstance(frame, Ref):
            _unlink(frame.path)


def discard(result: Any) -> None:
    """Remove the files a received result names and nobody mapped (its
    buffers follow its pickle, frame 0)."""
    for frame in result[1:]:
        if is_ref(frame):
            try:
                _unlink(_path(frame))
            except DataUnreachable:
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def sweep(pidns: int) -> int:
    """Remove files whose owner, a process of this pid namespace, has died.
    Only our private directory is read: no other user can put files there."""
    removed = 0
    try:
        with os.scandir(root()) as scan:
            names = [e.name for e in scan]
    except OSError:
        return 0
    for name in names:
        m = _ANY.fullmatch(name)
        if m is None or int(m.group(1)) != pidns or pid_alive(int(m.group(2))):
            continue
        try:
            os.unlink(os.path.join(root(), name))
            removed += 1
        except OSError:
            pass  # gone meanwhile: its owner's, or another sweep's
    if removed:
        log.info("removed %d shared-memory file(s) of dead cw processes", removed)
    return removed
