"""The supervisor's usage sampling: CPU % and RSS of each executor, for its HEARTBEAT."""
from __future__ import annotations

import psutil

from ..protocol import MAX_STATS


class Usage:
    """The supervisor's side: CPU % and RSS of each executor, for its HEARTBEAT."""

    def __init__(self) -> None:
        self.procs: dict[int, psutil.Process] = {}

    def header(self, executors: list[tuple[bytes, int, bool]]) -> dict:
        """``{"stats": {...}}`` for ``(identity, pid, runs a lane's job)`` of the live executors;
        one that is stopped (SIGSTOP) is said to be, so that the master no longer vouches for it."""
        stats: dict[str, dict] = {}
        live = set()
        for ident, pid, on_lane in executors[:MAX_STATS]:
            live.add(pid)
            try:
                proc = self.procs.get(pid)
                if proc is None:
                    proc = self.procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only starts the measurement
                with proc.oneshot():
                    entry = {"cpu": round(proc.cpu_percent(None), 1), "rss": proc.memory_info().rss}
                    stopped = proc.status() == psutil.STATUS_STOPPED
                stats[ident.hex()] = {**entry, **({"lane": 1} if on_lane else {}),
                                      **({"stopped": 1} if stopped else {})}
            except (psutil.Error, OSError):
                continue  # gone meanwhile: the supervisor reports its death
        for pid in [p for p in self.procs if p not in live]:
            del self.procs[pid]
        return {"stats": stats}
