#!/usr/bin/env python3
"""Start or stop a cw cluster of local processes: ``./mp.py -n 4 start``, ``./mp.py stop``."""
from cw.cli import mp_command

if __name__ == "__main__":
    mp_command(prog_name="mp.py")
