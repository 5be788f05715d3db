"""``python -m cw.executor``: an executor, as its worker's supervisor starts it.

The code is ``cw.worker.executor``; this name stays for the command line
(process lists, tests and tools that look for ``cw.executor``), and holds
its ``main``.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from .errors import CWError
from .worker import joblog, reaper
from .worker.executor import Executor

__all__ = ["Executor", "main"]


def _parser() -> Any:
    """The flags ``Supervisor.executor_command`` gives: the supervisor's, not
    a user's, so parsed without the CLI, whose imports (click and every
    launcher) would add a tenth of a second to each executor's start."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cw.executor",
                                     description="Run jobs for a cw worker. A worker (`cw worker`) "
                                                 "starts its executors itself: not a command to run by hand.")
    parser.add_argument("host")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--executor", type=bytes.fromhex, required=True)
    parser.add_argument("--supervisor", default="")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--liveness", type=int, default=10)
    parser.add_argument("--cluster")
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--express", action="store_true")
    parser.add_argument("--follow", action="store_true")
    parser.add_argument("--job-fd", type=int)
    return parser


def main(argv: Optional[list] = None) -> None:
    """An executor, as its supervisor starts it (see ``Supervisor.spawn``)."""
    from .cluster import cluster_dir
    from .logfiles import LEVELS, setup_logging
    from .security import worker_keys

    opts = _parser().parse_args(argv)
    # The supervisor passes its (checked) log file and level on in the environment.
    log_file = os.environ.get("CW_LOG_FILE")
    level = os.environ.get("CW_LOG_LEVEL", "").lower()
    setup_logging(level if level in LEVELS else "info",
                  Path(log_file) if log_file else None)
    joblog.install()  # a job's prints go to the worker's log, tagged with its id
    try:
        keys = None if opts.insecure else worker_keys(cluster_dir(opts.cluster))
    except (CWError, OSError) as e:  # its keys went missing since the supervisor read them
        sys.exit(f"cw executor: {e}")
    executor = Executor(f"tcp://{opts.host}:{opts.port}", opts.executor, opts.supervisor,
                        opts.heartbeat, opts.liveness, keys, opts.prefetch, opts.batch, opts.job_fd,
                        express=opts.express, cluster=opts.cluster if opts.follow else None)
    reaper.install()  # the processes a job starts end with it

    def on_term(signum: int, frame: Any) -> None:
        executor.stopping = True

    # The supervisor decides when executors stop; a Ctrl-C in its terminal
    # must not kill a job halfway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    executor.run()


if __name__ == "__main__":
    main()
