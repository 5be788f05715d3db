"""SLURM helpers kept under the original's names: ``cw.slurm.master_host()``.

The functions live in ``cw.squeue``, which every role may import; this
module is the original's public path to them.
"""
from __future__ import annotations

from .squeue import available, job_name, master_host

__all__ = ["available", "job_name", "master_host"]
