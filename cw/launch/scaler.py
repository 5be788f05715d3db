"""Workers that follow the queue: ``./slurm.py start --adapt MIN:MAX``.

``slurm.start`` writes the cluster's ``adapt.json`` (the bounds and the
worker jobs' sbatch options) and starts this scaler in the master's job,
beside the master (``python -m cw.launch.scaler --cluster NAME``); it ends
with that job, or when ``adapt.json`` is gone (``slurm.stop`` removes it
first). Every ``interval`` seconds, one turn:

    the master's status (one STATUS over its socket): jobs queued, idle executors
    one ``squeue`` for all of this user's jobs: this cluster's worker jobs
        running and pending, and the user's jobs in all
    submit, as one job array, the workers wanted: enough to reach MIN, and,
        while jobs queue and no executor is idle, one per PROCS queued jobs,
        never past MAX running and pending, ``max_pending`` pending, nor the
        user's MaxSubmit (sacctmgr, read once)
    write what it did to ``adapt-state.json`` (``cw status`` shows it)

Workers it starts beyond MIN leave after ``idle_timeout`` seconds without a
job (``cw worker --idle-timeout``). A failed sbatch is retried after
``interval * 2**failures`` seconds; after ``max_failures`` in a row the
scaler stops submitting and says why (sbatch's error) in the state file,
its log and ``cw status``. So the controller hears at most one squeue and
one sbatch per interval (default 20 s), never one per job.
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional

from .. import squeue
from ..cluster import cluster_dir, read_json, write_json
from ..errors import CWError
from ..logfiles import role_log_file, setup_logging
from ..squeue import job_name, user_limits
from . import query_status

log = logging.getLogger("cw.scaler")


@dataclass
class State:
    """What the scaler did, as ``adapt-state.json`` says it."""

    min: int
    max: int
    squeue_calls: int = 0
    sbatch_calls: int = 0
    submitted: int = 0  # workers asked for
    failures: int = 0  # sbatch failures in a row
    stopped: bool = False
    error: Optional[str] = None
    running: int = 0
    pending: int = 0
    retry_at: float = 0.0
    base_jobs: list = field(default_factory=list)  # array jobs that keep MIN: no idle timeout

    def public(self) -> dict:
        return {k: v for k, v in vars(self).items() if k not in ("retry_at", "base_jobs")}


class Scaler:
    def __init__(self, cluster: str, config: dict) -> None:
        self.cluster, self.config = cluster, config
        self.cdir = cluster_dir(cluster)
        self.state = State(config["min"], config["max"])
        self.max_submit = _max_submit()

    def turn(self, now: float) -> None:
        info = read_json(self.cdir / "master.json")
        if info is None:
            return
        try:
            snap = query_status(info["host"], info["port"], timeout=10, cluster=self.cluster,
                                insecure=self.config.get("insecure", False))
        except CWError as e:
            log.warning("the master does not answer: %s", e)
            return
        jobs = self.squeue()
        if jobs is None:
            return
        mine = [j for j in jobs if j[1] == job_name("worker", self.cluster)]
        st = self.state
        st.running = sum(1 for j in mine if j[2] == "RUNNING")
        st.pending = sum(1 for j in mine if j[2] == "PENDING")
        want, base = self.wanted(snap, st.running + st.pending, len(jobs))
        if want > 0 and not st.stopped and now >= st.retry_at:
            self.submit(want, base, now)

    def wanted(self, snap: dict, coming: int, user_jobs: int) -> tuple[int, bool]:
        """Workers to ask for now, and whether they keep MIN (no idle timeout)."""
        cfg, st = self.config, self.state
        if coming < cfg["min"]:
            want, base = cfg["min"] - coming, True
        else:
            idle = sum(1 for e in snap["executors"] if not e["running"] and not e["draining"])
            idle -= snap.get("parked", 0)  # idle, but their time limit comes before any queued job ends
            queued = snap["totals"]["queued"]
            want = math.ceil(queued / max(1, cfg["procs"])) - st.pending if queued and idle <= 0 else 0
            want, base = min(want, cfg["max"] - coming), False
        want = min(want, cfg["max_pending"] - st.pending)
        if self.max_submit is not None:
            want = min(want, self.max_submit - user_jobs)
        return want, base

    def squeue(self) -> Optional[list[tuple[str, str, str]]]:
        """This user's jobs (id, name, state), array tasks one by one: one call."""
        self.state.squeue_calls += 1
        found = squeue.jobs("%i|%j|%T", tasks=True)
        if found is None:
            log.warning("squeue failed")
            return None
        return [(job, name, state) for job, name, state in found]

    def submit(self, n: int, base: bool, now: float) -> None:
        from .slurm import Options, sbatch_job, worker_command  # slurm.start starts us: imported late

        cfg, st = self.config, self.state
        if not (self.cdir / "adapt.json").exists():
            return  # stopped meanwhile (slurm.stop removes it first)
        opts = Options(cluster=self.cluster, **cfg["options"])
        info = read_json(self.cdir / "master.json") or {}
        worker = worker_command(info.get("host", ""), info.get("port", 0), opts, cfg["cwd"])
        if not base:
            worker += ["--idle-timeout", f"{cfg['idle_timeout']:g}"]
        st.sbatch_calls += 1
        try:
            jobid = sbatch_job(opts, worker, n, self.cdir / "logs")
        except CWError as e:
            st.failures += 1
            st.error = str(e)
            st.retry_at = now + cfg["interval"] * 2 ** st.failures
            if st.failures >= cfg["max_failures"]:
                st.stopped = True
                log.error("adaptive scaling stopped after %d failed submissions: %s", st.failures, e)
            else:
                log.warning("worker submission failed (%d in a row): %s", st.failures, e)
            return
        st.failures, st.error = 0, None
        st.submitted += n
        if base:
            st.base_jobs.append(jobid)
        log.info("submitted %d worker(s) as job %s", n, jobid)

    def save(self) -> None:
        write_json(self.cdir / "adapt-state.json", {**self.state.public(), "time": time.time()})


def _max_submit() -> Optional[int]:
    """The user's MaxSubmit, if SLURM's accounting says one."""
    limits = user_limits()
    return None if limits is None else limits[1]


def run(cluster: str) -> None:
    cdir = cluster_dir(cluster)
    config = read_json(cdir / "adapt.json")
    if config is None:
        raise SystemExit(f"cw scaler: no adapt.json in {cdir}")
    scaler = Scaler(cluster, config)
    log.info("scaling workers of cluster %s between %d and %d", cluster, config["min"], config["max"])
    while (cdir / "adapt.json").exists():
        try:
            scaler.turn(time.monotonic())
        except Exception as e:  # said, and tried again next turn: a scaler does not die quietly
            log.exception("a turn of the scaler failed")
            scaler.state.error = f"a turn failed: {e!r}"
        scaler.save()
        time.sleep(config["interval"])
    log.info("adapt.json is gone: the scaler stops")


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cw.launch.scaler",
                                     description="Submit and let go of a cluster's SLURM workers as its "
                                                 "queue needs (started by `slurm.py start --adapt`).")
    parser.add_argument("--cluster", required=True)
    opts = parser.parse_args(argv)
    setup_logging("info", role_log_file(opts.cluster, "scaler"))
    run(opts.cluster)


if __name__ == "__main__":
    main()
