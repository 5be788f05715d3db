#!/usr/bin/env python3
"""Issue 28's check on a machine with real GPUs (not run in CI): a local
cluster whose worker finds its GPUs (``--gpus auto``) runs one job per GPU
with ``resources={"gpus": 1}``; each job reports what PyTorch sees.

    python benchmarks/gpu_check.py            # prints one line per job

Needs PyTorch where the workers run (``pip install torch``); without it,
each job still reports its CUDA_VISIBLE_DEVICES and ``nvidia-smi -L``.
"""
import os
import subprocess

import cw
from cw.client import ClusterExecutor
from cw.resources import gpu_ids


def probe(i):
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch
    except ImportError:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
        return i, visible, None, listed
    available = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if available else None
    return i, visible, available, f"{torch.cuda.device_count()} device(s) seen; first: {name}"


if __name__ == "__main__":
    gpus = gpu_ids("auto")
    if not gpus:
        raise SystemExit("no GPU found here (CUDA_VISIBLE_DEVICES, SLURM_JOB_GPUS, nvidia-smi -L)")
    print(f"this machine's GPUs: {', '.join(gpus)}")
    cw.start(1, launcher="local", procs=len(gpus))
    try:
        with ClusterExecutor() as executor:
            for i, visible, available, said in executor.map(probe, range(2 * len(gpus)),
                                                            resources={"gpus": 1}):
                print(f"job {i}: CUDA_VISIBLE_DEVICES={visible} torch.cuda.is_available()={available} {said}")
    finally:
        cw.stop(launcher="local")
