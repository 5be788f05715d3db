"""Big buffers through shared memory when client and executor share a host.

::

    client: numpy array ──os.write──► /dev/shm/cw-<pidns>-<pid>-<token>
            SUBMIT carries a reference frame (b"cw-shm:" + file name)
    executor: same host key? ──► mmap, copy-on-write (no copy, no master)
              else ──► the job bounces: the client sends it again inline

A result's big buffers travel the same way back when the job's context says
the client's host key equals the executor's; the client maps the file and
unlinks it at once. The master never sees the bytes, only a reference of a
few dozen bytes, and ``--max-message-size`` does not limit them.

The *host key* names what two processes must share for a file one writes to
be the same file the other reads: the boot, the ``/dev/shm`` filesystem, the
pid namespace (file names carry pids, see ``sweep``) and the user (files are
0600). Files are named after the process that must remove them: the client,
for its arguments (when the job is done) and for its results (when it reads
them). A file whose process has died is removed by the next cw process of
the same namespace that starts using shared memory.

``CW_SHM=0`` turns the path off; a full ``/dev/shm`` (64 MiB in a default
Docker container) makes a buffer travel inline instead.
"""
from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
from typing import Any, Iterable, Optional

from .cluster import pid_alive
from .errors import CWError

log = logging.getLogger(__name__)

ROOT = "/dev/shm"
SHARE_FROM = 1 << 20  # smaller out-of-band buffers are cheaper as frames
MARK = b"cw-shm:"
_NAME = re.compile(r"cw-(\d+)-(\d+)-[0-9a-f]{32}")


class DataUnreachable(CWError):
    """An executor on another host (or in another container) cannot map the
    shared-memory file a job's arguments are in; the client resends the job
    with its data inline."""


class Ref(bytes):
    """A payload frame naming a shared-memory file instead of holding bytes."""

    path: str


def _identity() -> Optional[tuple]:
    if os.environ.get("CW_SHM", "1").strip().lower() in ("0", "no", "false", "off"):
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        st = os.stat(ROOT)
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    if not os.access(ROOT, os.W_OK):
        return None
    return f"{boot}:{st.st_dev}:{st.st_ino}:{pidns}:{os.getuid()}", pidns


_cached: Optional[tuple] = None
_checked = False


def host_key() -> Optional[str]:
    """This process's host key, or None where shared memory is off or missing."""
    global _cached, _checked
    if not _checked:
        _checked = True
        _cached = _identity()
        if _cached is not None:
            sweep(_cached[1])
    return None if _cached is None else _cached[0]


def export(buf: memoryview, owner: int) -> Any:
    """Write ``buf`` to a new file that process ``owner`` will remove; return
    its ``Ref``, or ``buf`` itself when the file cannot be written."""
    assert _cached is not None, "call host_key() first"
    name = f"cw-{_cached[1]}-{owner}-{secrets.token_hex(16)}"
    path = os.path.join(ROOT, name)
    try:
        # os.write, not a mapping: the kernel fills the pages in one pass,
        # without a page fault for each of them.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = buf.cast("B")
            done = 0
            while done < len(view):
                done += os.write(fd, view[done:])
        finally:
            os.close(fd)
    except OSError as e:  # full (ENOSPC), or gone: this buffer travels inline
        log.debug("shared memory unavailable for %d bytes: %s", buf.nbytes, e)
        _unlink(path)
        return buf
    ref = Ref(MARK + name.encode())
    ref.path = path
    return ref


_BOUNCE = f"{DataUnreachable.__module__}.{DataUnreachable.__qualname__}:"


def unreachable(error: Optional[str]) -> bool:
    """Whether a failed job's error text says its executor could not map its data."""
    return bool(error and error.startswith(_BOUNCE))


def bounced(error: Optional[str], sent: Iterable[Any]) -> bool:
    """Whether a job failed because its executor could not map the data it
    was ``sent`` in shared memory (not because the job raised the same)."""
    return unreachable(error) and any(isinstance(f, Ref) for f in sent)


def is_ref(frame: Any) -> bool:
    return len(frame) < 256 and bytes(memoryview(frame)[:len(MARK)]) == MARK


def _path(frame: Any) -> str:
    name = bytes(memoryview(frame)[len(MARK):]).decode("ascii", "replace")
    if not _NAME.fullmatch(name):
        raise DataUnreachable(f"malformed shared-memory reference {name[:80]!r}")
    return os.path.join(ROOT, name)


def attach(frame: Any, consume: bool = False) -> mmap.mmap:
    """Map a referenced file copy-on-write: writable, and the writes stay here.

    ``consume``: the file was written for this process, which unlinks it
    (the mapping lives on until the last object using it is gone).
    """
    path = _path(frame)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise DataUnreachable(f"cannot open {path}: {e.strerror}") from e
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
        if consume:
            _unlink(path)


def inline(frame: Any) -> Any:
    """A frame with a referenced file's bytes in place of the reference."""
    if not isinstance(frame, Ref):
        return frame
    with open(frame.path, "rb") as f:
        return f.read()


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
    """Remove files whose owner, a process of this pid namespace, has died."""
    removed = 0
    try:
        names = os.listdir(ROOT)
    except OSError:
        return 0
    for name in names:
        m = _NAME.fullmatch(name)
        if m is None or int(m.group(1)) != pidns or pid_alive(int(m.group(2))):
            continue
        _unlink(os.path.join(ROOT, name))
        removed += 1
    if removed:
        log.info("removed %d shared-memory file(s) of dead cw processes", removed)
    return removed
