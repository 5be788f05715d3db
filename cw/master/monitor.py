"""What the cluster is doing, as ``cw status`` and the dashboard show it.

::

    supervisor ──HEARTBEAT {"stats": {executor: {cpu, rss}}}──► Monitor.worker_stats
    Master.step ──► Monitor.tick (every TICK s): throughput sample, job start times,
                    the dashboard's fresh snapshot
    STATUS ──► Monitor.snapshot(master): the JSON for `cw status --json` and /api/status

The master holds no per-job timestamps for this: throughput is the master's
cumulative count of finished jobs sampled each tick into a ring of one
bucket per second (``WINDOW`` of them), and a job's age is measured from the
first tick that saw it at the head of its executor. Both are cheap whatever
the job rate. ``Usage`` is the supervisor's side: CPU % and RSS of its
executors, from psutil.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Optional

from ..protocol import MAX_STATS, Status

if TYPE_CHECKING:
    from .state import Books, ExecutorState, Job

WINDOW = 60  # seconds of throughput history
TICK = 0.5  # seconds between samples (and dashboard updates)

log = logging.getLogger(__name__)


class Throughput:
    """Jobs finished per second over the last ``WINDOW`` seconds: a ring of counts."""

    def __init__(self, now: float) -> None:
        self.started = now
        self.second = int(now)
        self.counts = [0] * WINDOW
        self.last_total: Optional[int] = None

    def sample(self, now: float, total: int) -> None:
        """Credit the jobs finished since the last sample to the current second."""
        second = int(now)
        for s in range(self.second + 1, self.second + 1 + min(max(0, second - self.second), WINDOW)):
            self.counts[s % WINDOW] = 0
        self.second = max(self.second, second)
        if self.last_total is not None and total >= self.last_total:
            self.counts[self.second % WINDOW] += total - self.last_total
        self.last_total = total

    def per_second(self) -> list[int]:
        """The last ``WINDOW`` seconds, oldest first; the last one is under way."""
        return [self.counts[(self.second + 1 + i) % WINDOW] for i in range(WINDOW)]

    def summary(self, now: float) -> dict:
        series = self.per_second()
        total = sum(series)
        span = min(float(WINDOW), max(1.0, now - self.started))
        return {"window": WINDOW, "per_second": series, "last_minute": total,
                "rate": round(total / span, 3)}
_LANE = -1  # what the executor runs, for its age, while it runs a lane's job (no id of ours)


def parse_stats(value: Any) -> Optional[dict[str, tuple[float, int, bool, bool]]]:
    """A supervisor's HEARTBEAT ``stats``, or None if anything in it is malformed.

    Expected: ``{executor identity (hex): {"cpu": percent, "rss": bytes}}``,
    with ``"lane": 1`` for one that runs a job a client sent down its lane and
    ``"stopped": 1`` for one that is stopped (SIGSTOP).
    """
    if not isinstance(value, dict) or len(value) > MAX_STATS:
        return None
    out = {}
    for key, entry in value.items():
        if not (isinstance(key, str) and len(key) <= 64 and isinstance(entry, dict)):
            return None
        cpu, rss = entry.get("cpu"), entry.get("rss")
        if not (isinstance(cpu, (int, float)) and not isinstance(cpu, bool) and 0 <= cpu < 1e6):
            return None  # (NaN and infinity fail the range check too)
        if not (isinstance(rss, int) and not isinstance(rss, bool) and 0 <= rss < 2**62):
            return None
        lane, stopped = entry.get("lane", 0), entry.get("stopped", 0)
        if not all(type(flag) is int and flag in (0, 1) for flag in (lane, stopped)):
            return None
        out[key] = (float(cpu), rss, bool(lane), bool(stopped))
    return out


@dataclass
class _Seen:
    """One executor as the last tick saw it."""

    supervisor: Optional[bytes]
    head: Optional[int]  # the job it runs (the first it holds)
    since: float  # when that job was first seen at its head
    done: int


class Monitor:
    """The master's bookkeeping for status; touched only by the master's thread."""

    def __init__(self, now: float) -> None:
        self.throughput = Throughput(now)
        self.next_tick = now
        self.seen: dict[bytes, _Seen] = {}
        # supervisor -> executor -> usage: (cpu, rss, runs a lane's job, stopped)
        self.stats: dict[bytes, dict[str, tuple[float, int, bool, bool]]] = {}
        self.stopped_at: dict[bytes, dict[str, float]] = {}  # supervisor -> executor -> stopped since
        self.retired: dict[bytes, int] = {}  # supervisor -> jobs done by executors since gone
        self.failures: dict[bytes, int] = {}  # supervisor -> jobs that failed there
        self.failed = 0
        self.dashboard: Optional[Any] = None  # cw.master.dashboard.Dashboard, when it runs
        self.http_url: Optional[str] = None

    # -- fed by the master ---------------------------------------------------
    def tick(self, books: "Books", now: float) -> None:
        if now < self.next_tick:
            return
        self.next_tick = now + TICK
        try:
            self.sample(books, now)
        except Exception:  # status is not worth the master: log it, route on
            log.exception("status bookkeeping failed")

    def sample(self, books: "Books", now: float) -> None:
        self.throughput.sample(now, books.counts["done"] + books.counts["lost"])
        self.track(books.executors, now)
        for table in (self.stats, self.stopped_at, self.retired, self.failures):
            for sup in [s for s in table if s not in books.supervisors]:
                del table[sup]
        if self.dashboard is not None and self.dashboard.wanted():  # someone looked lately
            self.dashboard.publish(self.snapshot(books, now))

    def track(self, executors: dict[bytes, "ExecutorState"], now: float) -> None:
        """Note which job each executor runs since when, and what gone ones had done."""
        old, new = self.seen, {}
        for ident, state in executors.items():
            head = _LANE if self.on_lane(state) else next(iter(state.running), None)
            prev = old.pop(ident, None)
            sup = prev.supervisor if prev is not None else state.supervisor
            since = prev.since if prev is not None and prev.head == head else now
            if prev is not None and state.done < prev.done:  # re-registered under the same name
                self.retire(prev)
            new[ident] = _Seen(sup, head, since, state.done)
        for prev in old.values():
            self.retire(prev)
        self.seen = new

    def retire(self, seen: _Seen) -> None:
        if seen.supervisor is not None:
            self.retired[seen.supervisor] = self.retired.get(seen.supervisor, 0) + seen.done

    def job_failed(self, books: "Books", job: "Job", status: Status) -> None:
        """A job ended in error, timeout or loss (not a cancellation)."""
        if status is Status.CANCELLED:
            return
        self.failed += 1
        state = books.executors.get(job.executor) if job.executor else None
        sup = state.supervisor if state is not None else None
        if sup is not None:
            self.failures[sup] = self.failures.get(sup, 0) + 1

    def lane_failed(self, state: "ExecutorState", failed: int) -> None:
        """Jobs that failed on an executor's lane (cw.lanes), as its heartbeat counts them."""
        if failed > 0:
            self.failed += failed
            if state.supervisor is not None:
                self.failures[state.supervisor] = self.failures.get(state.supervisor, 0) + failed

    def worker_stats(self, identity: bytes, value: Any, now: float) -> None:
        stats = parse_stats(value)
        if stats is not None:
            self.stats[identity] = stats
            was = self.stopped_at.get(identity, {})
            self.stopped_at[identity] = {key: was.get(key, now) for key, usage in stats.items() if usage[3]}

    # -- the snapshot ----------------------------------------------------------
    def snapshot(self, books: "Books", now: float) -> dict:
        """A JSON-able picture of the cluster: the STATUS reply."""
        self.throughput.sample(now, books.counts["done"] + books.counts["lost"])
        views = [self.executor_view(state, now) for state in books.executors.values()]
        executors = [e for e in views if not e["express"]]  # the workers' --procs; spares apart
        on_lanes = Counter(state.lane_client for state in books.executors.values() if self.on_lane(state))
        waiting = Counter(job.client for state in books.executors.values()  # prefetched: not begun
                          for job in islice(state.running.values(), 0 if self.on_lane(state) else 1, None))
        clients = [client_view(c, on_lanes[c.identity], waiting[c.identity]) for c in books.clients.values()]
        for sup in books.supervisors.values():  # resources held by jobs that left: given back
            if sup.pool is not None:
                sup.pool.sweep(books.executors)
        by_worker: dict[Optional[str], list[dict]] = {}
        for e in views:
            by_worker.setdefault(e["worker"], []).append(e)
        workers = [self.worker_view(ident, sup, by_worker.get(ident.hex(), []), now)
                   for ident, sup in books.supervisors.items()]
        counts = dict(books.counts)
        totals = {
            "workers": len(workers), "executors": len(executors), "clients": len(clients),
            "queued": sum(c["queued"] for c in clients),
            "running": sum(e["running"] for e in views), "express": len(views) - len(executors),
            "prefetched": sum(e["prefetched"] for e in executors),
            "submitted": counts["submitted"], "done": counts["done"] + counts["lost"],
            "failed": self.failed, "lost": counts["lost"],
        }
        return {
            "session": books.session, "pid": os.getpid(), "hostname": socket.gethostname(),
            "port": books.port, "uptime": time.time() - books.started_at, "time": time.time(),
            "http": self.http_url,
            "workers": workers, "executors": executors, "clients": clients,
            "express": [e for e in views if e["express"]],
            "queued": totals["queued"], "running": totals["running"], "prefetched": totals["prefetched"],
            "totals": totals, "throughput": self.throughput.summary(now), "counts": counts,
            "lanes_off": lanes_off(books),
            "parked": len(books.parked),  # idle: no queued job they could finish before their time limit
        }

    def usage(self, state: "ExecutorState") -> Optional[tuple[float, int, bool, bool]]:
        """CPU %, RSS and whether it runs a lane's job, as its supervisor last said."""
        sup = state.supervisor
        return self.stats.get(sup, {}).get(state.identity.hex()) if sup else None

    def on_lane(self, state: "ExecutorState") -> bool:
        usage = self.usage(state)
        return usage is not None and usage[2]

    def stopped_since(self, state: "ExecutorState") -> Optional[float]:
        """Since when its supervisor has said it is stopped (SIGSTOP) at every
        HEARTBEAT, or None: long enough, and it vouches for it no more."""
        sup = state.supervisor
        return self.stopped_at.get(sup, {}).get(state.identity.hex()) if sup else None

    def executor_view(self, state: "ExecutorState", now: float) -> dict:
        seen = self.seen.get(state.identity)
        usage = self.usage(state)
        lane = usage is not None and usage[2]  # a job from a lane runs: the master's all wait
        head = next(iter(state.running), None)
        shown = _LANE if lane else head
        since = seen.since if seen is not None and seen.head == shown else now
        held, sup = len(state.running), state.supervisor
        return {
            "host": state.info.host, "pid": state.info.pid,
            "worker": sup.hex() if sup else None,
            "running": 1 if lane or held else 0, "prefetched": held if lane else max(0, held - 1),
            "job": "lane" if lane else head, "age": None if shown is None else round(now - since, 3),
            "done": state.done, "draining": state.capacity == 0,
            "lent": state.leased_to is not None, "lane": lane, "express": state.info.express,
            "cpu": usage[0] if usage else None, "rss": usage[1] if usage else None,
        }

    def worker_view(self, ident: bytes, sup: "ExecutorState", mine: list[dict], now: float) -> dict:
        busy = [e for e in mine if e["running"]]
        oldest = max(busy, key=lambda e: e["age"], default=None)
        usage = [e for e in mine if e["cpu"] is not None]
        spares = sum(e["express"] for e in mine)
        return {
            "host": sup.info.host, "pid": sup.info.pid, "procs": sup.info.procs or 0,
            "executors": len(mine) - spares, "express": spares,
            "state": worker_state([e for e in mine if not e["express"]]), "running": len(busy),
            "jobs": [e["job"] for e in busy],
            "job": oldest["job"] if oldest else None, "age": oldest["age"] if oldest else None,
            "done": self.retired.get(ident, 0) + sum(e["done"] for e in mine),
            "failed": self.failures.get(ident, 0),
            "cpu": round(sum(e["cpu"] for e in usage), 1) if usage else None,
            "rss": sum(e["rss"] for e in usage) if usage else None,
            "left": None if sup.ends is None else max(0, round(sup.ends - now)),  # s to its time limit
            "resources": None if sup.pool is None else sup.pool.summary(),
            "python": sup.info.python, "cloudpickle": sup.info.cloudpickle,
        }


def lanes_off(books: "Books") -> dict[str, str]:
    """Why lanes are off, per host, as its executors said in READY (one reason a host)."""
    return {state.info.host: state.info.lanes_off for state in books.executors.values()
            if state.info.lanes_off}


def worker_state(executors: list[dict]) -> str:
    if not executors:
        return "starting"
    if all(e["draining"] for e in executors):
        return "draining"
    return "busy" if any(e["running"] for e in executors) else "idle"


def client_view(client: Any, on_lanes: int = 0, prefetched: int = 0) -> dict:
    """``on_lanes``: its jobs that run on lanes (cw.lanes), which the master
    holds not; ``prefetched``: jobs an executor holds behind another, not begun."""
    queued = len(client.queue)
    return {"host": client.info.host, "pid": client.info.pid, "program": client.info.program,
            "queued": queued,
            "running": max(0, len(client.jobs) - queued - prefetched) + on_lanes,
            "prefetched": prefetched, "jobs": len(client.jobs) + on_lanes, "done": client.done}
