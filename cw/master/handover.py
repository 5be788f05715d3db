"""A master's handover to its successor master job (``cw.succession``):
before its SLURM time limit it stops dispatching, lets the jobs it runs end,
and exits, so that the successor waiting behind it in SLURM's queue starts."""
from __future__ import annotations

import logging
from typing import Optional

log = logging.getLogger("cw.master")

class Handover:
    """When this master stops dispatching and when it exits: set by
    ``Successor``, read by the master's loop (``Master.step``)."""

    def __init__(self) -> None:
        self.at: Optional[float] = None  # stop dispatching from then on (the master's clock)
        self.deadline = float("inf")  # exit then, running jobs or not
        self.begun = False

    def schedule(self, now: float, begin: float, leave: float) -> None:
        """From ``now``: begin in ``begin`` seconds, leave in ``leave``."""
        self.deadline = now + leave
        self.at = now + max(0.0, begin)  # last: the loop reads it first

    def holding(self, now: float) -> bool:
        """Whether dispatch stops: the handover has begun."""
        if self.at is None or now < self.at:
            return False
        if not self.begun:
            self.begun = True
            log.info("handing over to the successor master job: no new dispatch; "
                     "exiting once running jobs end (at most %.0f s)", max(0.0, self.deadline - now))
        return True

    def over(self, running: int, now: float) -> bool:
        return running == 0 or now >= self.deadline
