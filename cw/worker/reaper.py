"""The processes a job starts end with the job.

::

    executor (its process group's leader, a child subreaper)
      ├─ job's child, grandchildren, orphans ─┐ same process group: SIGKILLed
      │                                        │ and reaped when the job returns
      └─ start_new_session=True / setsid() ───── a group of its own: the user's, spared

The supervisor starts each executor in a session of its own, so a job's
processes share the executor's process group unless they leave it. On
Linux the executor is also a child subreaper (PR_SET_CHILD_SUBREAPER): a
daemon-like grandchild whose parent exits becomes its child, not init's.
So after each job the executor only has to look at its own children: one
``pread`` of ``/proc/self/task/<tid>/children`` (under a microsecond; the
children of other threads too when the job left threads running). Only
when there are some does it walk its descendants (psutil), SIGKILL those
in its process group and reap them.

A process the user wants to outlive its job starts in a session (or
group) of its own: ``subprocess.Popen(..., start_new_session=True)``,
``os.setsid()``. It is spared (and reaped after a job, once it ended):
no kill of the executor's group reaches it, so it is the user's to stop.

The processes ``multiprocessing`` manages for this process (the workers
of a ``Pool`` or ``ProcessPoolExecutor`` kept between jobs, a ``Process``
still referenced, the forkserver, the resource tracker) and what runs
under them are spared too, and never reaped here: multiprocessing reaps
them itself, and one killed or reaped behind its back breaks the next
job that uses it (a pool that never replaces its workers, a forkserver
that raises ``ChildProcessError``). They end with the executor.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Optional

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
REAP_SECONDS = 2.0  # the longest a job's end waits for the processes it killed to go


class Reaper:
    """Ends what a job left running in the executor's process group (see above)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd  # the main thread's children file, read again with pread
        self.threads = threading.active_count()  # more: a job left threads, which may have children
        self.spared: set[int] = set()  # children the user took out of our group

    def after_job(self) -> None:
        raw = os.pread(self.fd, 65536, 0)
        if threading.active_count() > self.threads:  # children of the job's threads are theirs
            raw += b" " + _other_threads_children()
        if not raw.strip():
            return
        kids = {int(pid) for pid in raw.split()}
        if kids <= self.spared | _multiprocessing_pids():
            self.spared = _reap(self.spared)  # the user's processes that ended meanwhile
            return
        self.sweep()

    def sweep(self) -> None:
        """SIGKILL every descendant in our process group, reap them; spare the others."""
        import psutil

        group, me = os.getpgrp(), os.getpid()
        for _ in range(5):  # a process killed mid-fork may leave a child the first pass missed
            doomed = []
            managed = _multiprocessing_pids()
            for p in psutil.Process(me).children(recursive=True):
                try:
                    if p.pid in managed or p.ppid() in managed:
                        managed.add(p.pid)  # (children come after their parents)
                    elif os.getpgid(p.pid) == group:
                        os.kill(p.pid, signal.SIGKILL)
                        doomed.append(p.pid)
                    elif p.ppid() == me:
                        self.spared.add(p.pid)
                except (OSError, psutil.Error):
                    pass  # gone meanwhile
            if not doomed:
                break
            log.info("killed %d process(es) the job left running", len(doomed))
            _wait(doomed)
        self.spared = _reap(self.spared)


_reaper: Optional[Reaper] = None  # this executor's, once main() installed it


def install() -> None:
    """Make this process (an executor, called from its main thread) end
    what its jobs start; nothing where there is no /proc."""
    global _reaper
    try:
        fd = os.open(f"/proc/self/task/{threading.get_native_id()}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # orphans go to init: a grandchild whose parent exits escapes
    _reaper = Reaper(fd)


def count_threads() -> None:
    """The executor's own threads have started: more than these are a job's."""
    if _reaper is not None:
        _reaper.threads = threading.active_count()


def after_job() -> None:
    """A job returned: end what it left in our group (a microsecond when nothing)."""
    if _reaper is not None:
        _reaper.after_job()


def _multiprocessing_pids() -> set[int]:
    """The processes multiprocessing runs for this one (see above); nothing
    where the job never imported it."""
    pids: set[int] = set()
    process = sys.modules.get("multiprocessing.process")
    if process is not None:
        pids.update(p.pid for p in list(process._children) if p.pid)  # type: ignore[attr-defined]
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is not None and forkserver._forkserver._forkserver_pid:  # type: ignore[attr-defined]
        pids.add(forkserver._forkserver._forkserver_pid)  # type: ignore[attr-defined]
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if tracker is not None and tracker._resource_tracker._pid:  # type: ignore[attr-defined]
        pids.add(tracker._resource_tracker._pid)  # type: ignore[attr-defined]
    return pids


def _other_threads_children() -> bytes:
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                out.append(f.read())
        except OSError:
            pass  # the thread ended
    return b" ".join(out)


def _reap(pids: set[int]) -> set[int]:
    """Reap those of ``pids`` that ended; return those still running."""
    left = set()
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                left.add(pid)
        except ChildProcessError:
            pass
    return left


def _wait(pids: list[int]) -> None:
    """Reap killed processes; a grandchild is ours to reap once its killed
    parent is gone (we are its subreaper)."""
    pending = set(pids)
    deadline = time.monotonic() + REAP_SECONDS
    while pending:
        for pid in list(pending):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pending.discard(pid)
            except ChildProcessError:  # not ours (yet): gone, or its parent's zombie still
                if not _exists(pid):
                    pending.discard(pid)
        if pending and time.monotonic() > deadline:
            log.warning("processes %s the job left did not end within %g s", sorted(pending), REAP_SECONDS)
            return
        if pending:
            time.sleep(0.001)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
