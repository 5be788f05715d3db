#!/usr/bin/env python3
"""Start or stop a cw cluster on SLURM: ``./slurm.py -n 8 start``, ``./slurm.py stop``."""
from cw.cli import slurm_command

if __name__ == "__main__":
    slurm_command(prog_name="slurm.py")
