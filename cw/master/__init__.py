"""The master: one process, one loop, routing jobs between clients and executors.

``cw.master.loop`` holds ``Master``, its socket and its turn (``step``);
``cw.master.peers`` every peer's liveness and the ways an executor is lost;
``cw.master.jobs`` jobs, results and replies; ``cw.master.scheduler`` who
runs what; ``cw.master.leases`` lanes lent to clients; ``cw.master.state``
the records; ``cw.master.monitor`` and ``cw.master.dashboard`` what
``cw status`` and the dashboard show. ``python -m cw.master`` runs
``cw.master.command``.
"""
from __future__ import annotations

from typing import Optional

from .loop import Master
from .state import Limits


def main(argv: Optional[list] = None) -> None:
    from .command import master_command

    master_command.main(args=argv, prog_name="python -m cw.master")


__all__ = ["Limits", "Master", "main"]
