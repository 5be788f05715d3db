#!/usr/bin/env python3
"""Jobs that each need a GPU: each sees only the one it was given.

Starts a local cluster of one worker with four executors and runs eight
jobs that ask for one GPU each (``resources={"gpus": 1}``): four at a time,
each with ``CUDA_VISIBLE_DEVICES`` set to its own device. On a machine
without GPUs the worker is told of four made-up ones (``CW_GPUS=0,1,2,3``,
which ``cw worker --gpus`` reads); on one with GPUs, unset ``CW_GPUS`` and
the worker finds them (``--gpus auto``).
"""
import os
import time

import cw
from cw.client import ClusterExecutor


def train(seed):
    time.sleep(0.2)  # with PyTorch: torch.cuda.is_available(), torch.cuda.get_device_name(0)
    return seed, os.environ.get("CUDA_VISIBLE_DEVICES")


if __name__ == "__main__":
    os.environ.setdefault("CW_GPUS", "0,1,2,3")
    cw.start(1, launcher="local", procs=4)
    try:
        with ClusterExecutor() as executor:
            for seed, gpu in executor.map(train, range(8), resources={"gpus": 1}):
                print(f"seed {seed} ran on GPU {gpu}")
    finally:
        cw.stop(launcher="local")
