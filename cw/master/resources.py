"""The master's books of workers' resources (``cw.resources``).

Each worker (its supervisor's READY) has CPUs, memory and GPU ids; a job
that asked for resources (``Job.needs``: ``[cpus, gpus, mem]``) goes only
to an executor with nothing else to do whose worker has them free, runs
there alone, and holds them until it leaves that executor, however it
leaves (a result, a death, a kill, a cancel): ``Pool.sweep`` gives back what
a job no longer running there held, so no path of the master has to.

A job without ``resources`` holds nothing, as before: a worker's plain jobs
are limited only by its executors. Only where a job with resources holds
CPUs does each executor busy with plain jobs count as one CPU, so a job
with ``cpus=2`` on a worker of 2 CPUs runs alone there.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..resources import describe
from .state import ExecutorState, Job

# How long a worker starts no job that holds nothing after a job with
# resources found its CPUs taken by such jobs: they end, and it fits. The
# job asks again at every look (UNPARK_SECONDS), so it lasts while it waits.
RESERVE_SECONDS = 2.5


class Pool:
    """A worker's resources, and which jobs hold them."""

    def __init__(self, cpus: int, mem: int, gpus: list[str], cpu_ids: Sequence[str] = ()) -> None:
        self.cpus, self.mem = cpus, mem
        self.gpus = list(dict.fromkeys(g for g in gpus if g))  # each id once
        self.free_gpus = list(self.gpus)
        self.cpu_ids = list(dict.fromkeys(c for c in cpu_ids if c))  # for jobs that bind
        self.free_cpu_ids = list(self.cpu_ids)
        # tid -> (job, executor, its GPUs, its CPUs where it binds)
        self.held: dict[int, tuple[Job, bytes, list[str], list[str]]] = {}
        self.members: set[bytes] = set()  # its executors seen by the scheduler
        self.pinned: dict[bytes, list[str]] = {}  # executor -> the GPUs its first GPU job had
        self.reserved_until = 0.0  # a job waits for CPUs busy with plain jobs: none start here till then

    def used(self) -> tuple[int, int, int]:
        """CPUs, GPUs and memory held by jobs (after ``sweep``)."""
        return (sum(job.needs[0] for job, *_ in self.held.values()),
                len(self.gpus) - len(self.free_gpus),
                sum(job.needs[2] for job, *_ in self.held.values()))

    def sweep(self, executors: dict[bytes, ExecutorState]) -> None:
        """Give back what jobs no longer running where they went held; not
        while the executor it ran on is being killed (its process may still
        hold the GPU), only once that executor is gone."""
        for tid, (job, identity, gpus, cpu_ids) in list(self.held.items()):
            state = executors.get(identity)
            if state is not None and state.killed:
                continue
            if job.executor != identity or state is None or tid not in state.running:
                del self.held[tid]
                self.free_gpus += gpus
                self.free_cpu_ids += cpu_ids
        self.members &= executors.keys()
        for gone in self.pinned.keys() - executors.keys():
            del self.pinned[gone]

    def plain_busy(self, executors: dict[bytes, ExecutorState]) -> int:
        """Executors of this worker busy with jobs that hold nothing (one CPU each)."""
        holders = {held[1] for held in self.held.values()}
        return sum(1 for m in self.members if m not in holders and (s := executors.get(m)) is not None
                   and s.running and not s.info.express)

    def admits(self, job: Optional[Job], state: ExecutorState, executors: dict[bytes, ExecutorState],
               now: float) -> bool:
        """Whether ``state`` (idle, of this worker) may take ``job`` now;
        ``job`` None or plain: a job that holds nothing."""
        self.members.add(state.identity)
        need = None if job is None else job.needs
        if need is None and not self.held and now >= self.reserved_until:
            return True  # the common case, quick: nothing held here
        self.sweep(executors)
        cpus, _, mem = self.used()
        if need is None:
            return now >= self.reserved_until and (not cpus or cpus + self.plain_busy(executors) < self.cpus)
        if not (self.gpus_for(state, need[1]) is not None and (not self.mem or mem + need[2] <= self.mem)
                and (need[3:] != [1] or need[0] <= len(self.free_cpu_ids))):
            return False
        if cpus + self.plain_busy(executors) + need[0] <= self.cpus:
            return True
        if cpus + need[0] <= self.cpus:  # only plain jobs in the way: they end, and none starts meanwhile
            self.reserved_until = now + RESERVE_SECONDS
        return False

    def gpus_for(self, state: ExecutorState, want: int) -> Optional[list[str]]:
        """The GPU ids ``state`` would get for a job of ``want`` GPUs, or None
        if not now. An executor keeps the ids its first GPU job had for later
        jobs of as many (a process keeps the devices its CUDA started with)."""
        pinned = self.pinned.get(state.identity)
        if pinned is not None and len(pinned) == want:
            return pinned if all(g in self.free_gpus for g in pinned) else None
        if want > len(self.free_gpus):
            return None
        others = {g for identity, ids in self.pinned.items() if identity != state.identity for g in ids}
        return sorted(self.free_gpus, key=lambda g: g in others)[:want]  # others' own ids last

    def take(self, job: Job, state: ExecutorState) -> Optional[str]:
        """Hold ``job``'s resources for it on ``state``; its GPU ids, if any."""
        assert job.needs is not None
        gpus = self.gpus_for(state, job.needs[1]) or []
        for g in gpus:
            self.free_gpus.remove(g)
        cpu_ids = self.free_cpu_ids[:job.needs[0]] if job.needs[3:] == [1] else []
        del self.free_cpu_ids[:len(cpu_ids)]
        self.held[job.tid] = (job, state.identity, gpus, cpu_ids)
        if gpus:
            self.pinned.setdefault(state.identity, gpus)
        job.cpu_ids = ",".join(cpu_ids) or None
        return ",".join(gpus) or None

    def could_ever(self, need: list[int]) -> bool:
        return (need[0] <= (len(self.cpu_ids) if need[3:] == [1] else self.cpus) and need[1] <= len(self.gpus)
                and (not self.mem or need[2] <= self.mem))

    def summary(self) -> dict:
        cpus, gpus, mem = self.used()
        return {"cpus": self.cpus, "cpus_used": cpus, "mem": self.mem, "mem_used": mem,
                "gpus": ",".join(self.gpus), "gpus_used": gpus, "cpu_ids": ",".join(self.cpu_ids)}


class Placement:
    """Whether a job may go to an executor now: its worker's time limit
    (``expected``) and resources."""

    def __init__(self, executors: dict[bytes, ExecutorState],
                 supervisors: dict[bytes, ExecutorState]) -> None:
        self.executors, self.supervisors = executors, supervisors

    def fits(self, state: ExecutorState, expected: float, now: float) -> bool:
        """Whether a job of ``expected`` seconds ends before the executor's
        worker is stopped (its time limit, as its supervisor said)."""
        sup = self.supervisors.get(state.supervisor or b"")
        return sup is None or sup.ends is None or now + expected <= sup.ends

    def suits(self, state: ExecutorState, job: Job, now: float, idle: bool) -> bool:
        """Whether ``job`` may go to the executor now: its worker has the
        time (``expected``), and the resources it asked for are free there
        (``cw.master.resources``: then only to an executor with nothing else)."""
        if job.expected is not None and not self.fits(state, job.expected, now):
            return False
        pool = self.pool(state)
        if not idle:  # behind other jobs: only one that holds nothing, and not on a worker kept free
            return job.needs is None and (pool is None or now >= pool.reserved_until)
        if pool is None:
            return job.needs is None
        return pool.admits(job, state, self.executors, now)

    def pool(self, state: ExecutorState) -> Optional[Pool]:
        sup = self.supervisors.get(state.supervisor or b"")
        return None if sup is None else sup.pool


def never_runs(need: list[int], pools: list[Pool]) -> Optional[str]:
    """Why no worker of these could ever run a job that needs ``need``, or
    None if one could (or none is there yet: one may come)."""
    if not pools or any(pool.could_ever(need) for pool in pools):
        return None
    best = max(pools, key=lambda p: (len(p.gpus), p.cpus, p.mem))
    has = describe([best.cpus, len(best.gpus), best.mem])
    return (f"no worker could ever run this job: it asks for {describe(need)}, and the "
            f"best-endowed of the {len(pools)} worker(s) has {has}"
            + (f" (GPUs {', '.join(best.gpus)})" if best.gpus else "")
            + "; ask for less, or start a worker with more (cw worker --gpus/--cpus/--mem)")
