"""``--awake``: keep this host's CPUs from sleeping while a benchmark runs.

Linux's PM QoS interface: while a process holds ``/dev/cpu_dma_latency``
open with 0 written to it, idle CPUs poll instead of entering a sleep state,
as tuned's ``latency-performance`` profile does. On a VM whose idle vCPUs
halt (cpuidle ``haltpoll`` with ``guest_halt_poll_ns=0``), a message that
wakes a sleeping process pays the hypervisor for waking its halted vCPU, at
every hop. Every system of a run gets the same host, so ratios stay fair.
Needs write access to the device (root).
"""
from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path
from typing import Iterator

DEVICE = "/dev/cpu_dma_latency"
HELP = ("keep the CPUs from sleeping while it runs (holds /dev/cpu_dma_latency at 0, "
        "as tuned's latency-performance profile does; needs root): on a VM this takes "
        "the cost of waking a halted vCPU out of every hop")


@contextlib.contextmanager
def awake(enabled: bool) -> Iterator[None]:
    """Hold the CPUs awake for the ``with`` block when ``enabled``."""
    if not enabled:
        yield
        return
    try:
        fd = os.open(DEVICE, os.O_WRONLY)
    except FileNotFoundError:
        raise SystemExit(f"--awake: this host has no {DEVICE} (Linux PM QoS); "
                         "run without --awake") from None
    except OSError as e:
        raise SystemExit(f"--awake needs write access to {DEVICE} (root): {e.strerror}") from None
    try:
        try:
            os.write(fd, struct.pack("i", 0))  # microseconds of wake-up latency allowed
        except OSError as e:
            raise SystemExit(f"--awake: {DEVICE} refused the request: {e.strerror}") from None
        yield
    finally:
        os.close(fd)  # the request ends with the last descriptor


def idle_settings() -> dict:
    """How this host's idle CPUs sleep, for the results file."""
    found = {}
    for key, path in [("cpuidle driver", "/sys/devices/system/cpu/cpuidle/current_driver"),
                      ("guest_halt_poll_ns", "/sys/module/haltpoll/parameters/guest_halt_poll_ns")]:
        try:
            found[key] = Path(path).read_text().strip()
        except OSError:
            pass
    return found
