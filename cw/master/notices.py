"""What a cluster's scaler (``slurm.py start --adapt``, ``cw.launch.scaler``)
says that clients must hear: that it stopped submitting workers, and why.

The scaler runs beside the master and keeps its state in the cluster
directory (``adapt-state.json``). Every ``LOOK_SECONDS`` the master reads
it; once it says the scaler stopped, each client gets one ERROR with code
``notice`` (a client logs it as a warning), clients that connect later too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from ..cluster import read_json
from ..protocol import ErrorCode, Kind, Message

LOOK_SECONDS = 10.0


class ScalerNotice:
    def __init__(self, cluster_dir: Optional[Path], send: Callable[[bytes, Message], None]) -> None:
        self.cluster_dir = cluster_dir
        self.send = send
        self.next_look = 0.0
        self.said: Optional[str] = None
        self.told: set[bytes] = set()  # clients that heard ``said``

    def tick(self, clients: dict, now: float) -> None:
        if self.cluster_dir is None or now < self.next_look:
            return
        self.next_look = now + LOOK_SECONDS
        said = self.stopped()
        if said != self.said:
            self.said, self.told = said, set()
        if said is None:
            return
        for identity in clients.keys() - self.told:
            self.send(identity, Message(Kind.ERROR, {"error": said, "code": ErrorCode.NOTICE.value}))
            self.told.add(identity)

    def stopped(self) -> Optional[str]:
        """Why the scaler stopped, if it runs for this cluster and stopped."""
        assert self.cluster_dir is not None
        if not (self.cluster_dir / "adapt.json").exists():
            return None
        state = read_json(self.cluster_dir / "adapt-state.json") or {}
        if not state.get("stopped"):
            return None
        return (f"adaptive scaling (--adapt) stopped after {state.get('failures')} failed worker "
                f"submissions, and no more workers will come by it: {state.get('error')}")
