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
import re
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from . import squeue
from .cluster import cluster_dir, read_json, write_json
from .errors import ClusterError, CWError

log = logging.getLogger("cw.master")

FILE = "succession.json"
# A master hands over this long before its time limit, or a quarter of its
# time where that is less: long enough for the jobs it runs to end and for
# SLURM to start the successor before the limit kills the old one.
LEAD = 60.0
RUNNING_GRACE = 120.0  # a master job running this long that does not answer is no successor to wait for
# Reasons of a job queued that will not start by itself.
HELD = re.compile(r"held|launch failed|NeverSatisfied|Invalid", re.IGNORECASE)
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
    job of ``cluster`` it may wait for, where succession is on; None where
    none comes. A job held in the queue does not count, nor one that has
    run for ``RUNNING_GRACE`` (it would have answered by then: what is
    wrong is not its start)."""
    try:
        if not (cluster_dir(cluster) / FILE).exists():
            return None
    except CWError:
        return None
    found = squeue.jobs("%i|%T|%r|%M", name=squeue.job_name("master", cluster), timeout=10) or []
    for jobid, state, reason, elapsed in sorted(found, key=lambda job: job[1] != "RUNNING"):
        if state == "RUNNING" and (squeue.parse_time_left(elapsed) or 0) <= RUNNING_GRACE \
                or state == "PENDING" and not HELD.search(reason):
            return f"master job {jobid} of cluster {cluster} is {state.lower()} in SLURM ({reason})"
    return None


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
        """In this cluster's master job (not any job: an salloc shell, say), with succession on."""
        return environ.get("SLURM_JOB_NAME") == squeue.job_name("master", cdir.name) \
            and bool(environ.get("SLURM_JOB_ID")) and (cdir / FILE).exists()

    def run(self) -> None:
        try:
            self.succeed()
        except Exception:  # said: a thread that dies quietly would end the cluster unseen
            log.exception("the successor thread failed: the cluster ends with this master job")

    def succeed(self) -> None:
        """Submit the successor, trying again (5 s, then twice as long, to
        2 min) until it is time to hand over; then schedule the handover.
        Without a successor, no handover: this master serves to its end."""
        config = read_json(self.cdir / FILE)
        if config is None:
            return
        began, left = time.monotonic(), squeue.time_left(self.environ)
        lead = LEAD if left is None else min(float(config.get("lead", LEAD)), left / 4)
        delay = 5.0
        while self.successor is None:
            try:
                self.successor = self.ensure(config)
            except CWError as e:
                if left is not None and time.monotonic() + delay > began + left - lead:
                    log.error("no successor master job (%s): the cluster ends with this one", e)
                    return
                log.warning("could not submit a successor master job (%s); trying again in %.0f s", e, delay)
                time.sleep(delay)
                delay = min(2 * delay, 120.0)
        if self.successor == "":
            return  # the cluster is being stopped
        if left is None:
            log.info("successor master job %s waits behind this one (%s), which has no time limit",
                     self.successor, self.job)
            return
        self.schedule(began, left - lead, left - min(MARGIN, lead / 2))
        log.info("successor master job %s waits behind this one (%s); handing over %.0f s before "
                 "its time limit", self.successor, self.job, lead)

    def ensure(self, config: dict) -> str:
        """The master job waiting behind this one: one already there (this
        job was requeued), else a new one; "" if the cluster is being
        stopped (succession.json went: a job submitted meanwhile is cancelled)."""
        name = squeue.job_name("master", self.cdir.name)
        waiting = squeue.jobs("%i", name=name, states="PENDING")
        if waiting is None:
            raise ClusterError("squeue failed: cannot tell whether a successor waits")
        if waiting:
            return waiting[0][0]
        if not (self.cdir / FILE).exists():
            return ""
        job = squeue.submit([*config["sbatch"], f"--dependency=afterany:{self.job}"], config["script"])
        if not (self.cdir / FILE).exists():  # stop began as it was submitted
            squeue.cancel(job)
            return ""
        return job
