"""Succession: a cluster whose master outlives its SLURM job's time limit.

::

    slurm.py start ──► succession.json: the master's sbatch arguments and script
    master job A starts ──► sbatch --dependency=afterany:A, the same script:
                            successor B waits in SLURM's queue behind A
    A's time limit − lead ──► A stops dispatching, lets its running jobs end
                            (at most until a little before the limit), exits
    A ends (so, killed, or its node lost) ──► B starts, writes master.json,
                            and submits C behind itself
    a client or worker whose master went silent ──► reads master.json again
                            ──► dials B; clients send B the jobs it lacks

Nothing passes from A to B, because nothing needs to: a master holds no job
that is not also held elsewhere. Each client keeps every job's payload until
its result comes and sends them all again to a master it does not know
(``cw.client.iocore``); workers register again; a result that reaches B for
a job of A's is dropped, and that job runs again. So a handover costs the
jobs that were running at the switch and the time B takes to start, and
loses no job. While a successor waits in the queue, a client whose master is
gone keeps its jobs past its ``connect_timeout`` (``coming``).

``slurm.py stop`` removes succession.json first, then cancels the waiting
successor, then ends the running master: no master submits another.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from . import squeue
from .cluster import cluster_dir, read_json, write_json
from .errors import CWError

log = logging.getLogger("cw.master")

FILE = "succession.json"
# A master hands over this long before its time limit, or a quarter of its
# time where that is less: long enough for the jobs it runs to end and for
# SLURM to start the successor before the limit kills the old one.
LEAD = 60.0
# It exits this long before the limit even if jobs still run: those run again.
MARGIN = 5.0


def configure(cdir: Path, sbatch: Sequence[str], script: str, lead: float = LEAD) -> None:
    """Record how the cluster's master jobs are submitted, for each to
    submit the next."""
    write_json(cdir / FILE, {"sbatch": list(sbatch), "script": script, "lead": lead})


def end(cdir: Path) -> None:
    """No successor from now on (``slurm.py stop``, or a start without one)."""
    (cdir / FILE).unlink(missing_ok=True)


def coming(cluster: str) -> Optional[str]:
    """For a client whose master went silent: a sentence naming the master
    job of ``cluster`` that SLURM runs or queues, where succession is on
    (so the client waits for it); None where none comes."""
    try:
        if not (cluster_dir(cluster) / FILE).exists():
            return None
    except CWError:
        return None
    found = squeue.jobs("%i|%T", name=squeue.job_name("master", cluster)) or []
    if not found:
        return None
    jobid, state = min(found, key=lambda job: job[1] != "RUNNING")
    return f"master job {jobid} of cluster {cluster} is {state.lower()} in SLURM"


class Successor(threading.Thread):
    """In a master's SLURM job: puts the successor job in the queue behind
    this one and tells the master when to hand over (``schedule(now, begin,
    leave)``: ``cw.master.handover.Handover.schedule``). A thread, because sbatch
    and squeue may be slow, and the master serves meanwhile."""

    def __init__(self, cdir: Path, schedule: Callable[[float, float, float], None],
                 environ: Mapping[str, str] = os.environ) -> None:
        super().__init__(name="cw-successor", daemon=True)
        self.cdir, self.schedule, self.environ = cdir, schedule, environ
        self.job = environ.get("SLURM_JOB_ID", "")
        self.successor: Optional[str] = None

    @staticmethod
    def wanted(cdir: Path, environ: Mapping[str, str] = os.environ) -> bool:
        return bool(environ.get("SLURM_JOB_ID")) and (cdir / FILE).exists()

    def run(self) -> None:
        config = read_json(self.cdir / FILE)
        if config is None:
            return
        try:
            self.successor = self.ensure(config)
        except CWError as e:
            log.error("no successor for this master job: %s; the cluster ends with it", e)
            return
        left = squeue.time_left(self.environ)
        if left is None:
            log.info("successor master job %s waits behind this one (%s), which has no time limit",
                     self.successor, self.job)
            return
        lead = min(float(config.get("lead", LEAD)), left / 4)
        self.schedule(time.monotonic(), left - lead, left - min(MARGIN, lead / 2))
        log.info("successor master job %s waits behind this one (%s); handing over in %.0f s, "
                 "%.0f s before the time limit", self.successor, self.job, left - lead, lead)

    def ensure(self, config: dict) -> str:
        """The master job waiting behind this one: one already there (this
        job was requeued), else a new one."""
        name = squeue.job_name("master", self.cdir.name)
        waiting = [job for job, state in squeue.jobs("%i|%T", name=name, states="PENDING") or []]
        if waiting:
            return waiting[0]
        return squeue.submit([*config["sbatch"], f"--dependency=afterany:{self.job}"], config["script"])
