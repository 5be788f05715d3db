"""Per-job resources: what a job asks for, and what a worker has.

A job asks with ``resources={"cpus": 4, "gpus": 1, "mem": "8G"}``
(``ClusterExecutor.submit``/``map``, ``ClientThread.submit``); on the wire
it is ``[cpus, gpus, mem bytes]`` in SUBMIT. A worker says what it has in its
supervisor's READY: ``cpus``, ``mem`` (bytes) and ``gpus`` (device ids,
comma-separated), from ``cw worker --cpus/--mem/--gpus`` or SLURM's
allocation. The master's bookkeeping is ``cw.master.resources``; the job
runs with ``CUDA_VISIBLE_DEVICES`` set to the ids it was given.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any, Mapping, Optional

from .host import cpus_available

KEYS = ("cpus", "gpus", "mem", "bind")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any, what: str = "mem") -> int:
    """Bytes from ``8G``, ``512M``, ``1.5T``, ``4096`` (bytes) or an int."""
    if type(value) is int and value >= 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{what}={value!r}: give bytes, or a size such as 512M, 8G or 1.5T")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def request(resources: Optional[Mapping[str, Any]]) -> Optional[list[int]]:
    """A job's ``resources=`` as ``[cpus, gpus, mem]`` (and a 1 after them
    with ``bind``: its process kept to CPUs of its own), checked; None for
    none (or what every job gets anyway: one CPU)."""
    if resources is None:
        return None
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict such as {{'gpus': 1}}, not {type(resources).__name__}")
    unknown = set(resources) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown resource(s) {sorted(unknown)}: cw knows {', '.join(KEYS)}")
    cpus, gpus = resources.get("cpus", 1), resources.get("gpus", 0)
    for name, value, least in (("cpus", cpus, 1), ("gpus", gpus, 0)):
        if type(value) is not int or not least <= value <= 4096:
            raise ValueError(f"resources {name}={value!r}: a whole number from {least} to 4096")
    need = [cpus, gpus, parse_size(resources.get("mem", 0))]
    bind = resources.get("bind", False)
    if type(bind) is not bool:
        raise ValueError(f"resources bind={bind!r}: True or False")
    return need + [1] if bind else None if need == [1, 0, 0] else need


def describe(need: list[int]) -> str:
    """``[2, 1, 8 GiB]`` as ``2 CPUs, 1 GPU, 8.0 GiB of memory``."""
    cpus, gpus, mem = need[:3]
    words = [f"{cpus} CPU{'s' * (cpus != 1)}{' of its own' if need[3:] == [1] else ''}"]
    words += [f"{gpus} GPU{'s' * (gpus != 1)}"] if gpus else []
    words += [f"{mem / (1 << 30):.1f} GiB of memory"] if mem else []
    return ", ".join(words)


def gpu_ids(value: Optional[str], environ: Mapping[str, str] = os.environ) -> list[str]:
    """A worker's GPUs: ``auto`` (``CUDA_VISIBLE_DEVICES``, which SLURM sets
    for a job given GPUs, else SLURM's ``SLURM_JOB_GPUS``, else ``nvidia-smi
    -L``), a count ``N`` (ids 0
    to N-1, or the first N of auto's), ``none``, or a list ``0,1,3``."""
    if value is None or value.strip().lower() == "auto":
        return _found_gpus(environ)
    value = value.strip()
    if value.lower() in ("none", ""):
        return []
    if value.isdigit():
        found = _found_gpus(environ)
        return found[:int(value)] if len(found) >= int(value) else [str(i) for i in range(int(value))]
    ids = [part.strip() for part in value.split(",")]
    if not all(re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", i) for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {value!r}: give auto, a count, none, or device ids such as 0,1,3")
    return ids


def _found_gpus(environ: Mapping[str, str]) -> list[str]:
    # CUDA_VISIBLE_DEVICES first: SLURM sets it to what CUDA numbers the job's
    # GPUs (0, 1, ... where it confines devices), and that is what a job is given.
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS"):
        if var not in environ:
            continue
        listed = environ[var].strip()
        if not listed or listed.lower() in ("nodevfiles", "none", "-1"):
            return []  # set, to say there are none
        return list(dict.fromkeys(part.strip() for part in listed.split(",") if part.strip()))
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]
    return []


def worker_has(cpus: Optional[int], mem: Optional[int], gpus: Optional[list[str]], procs: int = 1,
               environ: Mapping[str, str] = os.environ) -> dict:
    """What a worker declares in READY: its CPUs (``--cpus``, else SLURM's
    ``SLURM_CPUS_ON_NODE``, else those this process may use, and never fewer
    than its ``procs`` executors: so many jobs run at once), memory
    (``--mem``, else ``SLURM_MEM_PER_NODE`` in MiB, else the machine's) and
    GPU ids (as ``gpu_ids`` read them; None: ``auto``), and the ids of the
    CPUs it may use, for jobs that ask to ``bind`` (Linux)."""
    slurm_cpus = environ.get("SLURM_CPUS_ON_NODE", "")
    if cpus is None:
        cpus = max(int(slurm_cpus) if slurm_cpus.isdigit() else cpus_available(), procs)
    if mem is not None:
        size = mem
    elif environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        size = int(environ["SLURM_MEM_PER_NODE"]) << 20
    else:
        import psutil

        size = psutil.virtual_memory().total
    ids = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {"cpus": cpus, "mem": size, "gpus": ",".join(gpu_ids("auto", environ) if gpus is None else gpus),
            "cpu_ids": ",".join(map(str, ids[:cpus]))}
