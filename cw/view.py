"""``cw status`` as text: a STATUS snapshot rendered to fit an 80-column terminal.

::

    master node01:5494  pid 4242  up 1h02m  dashboard http://127.0.0.1:8787/
    jobs  120 queued  8 running  1,203 done  3 failed  |  12.3 jobs/s (738 in the last minute)

    WORKER            PID  EXEC  STATE      JOB    AGE    DONE  FAIL   CPU%    RSS
    node01          31337   4/4  busy    17 +3  12.3s     300     1  398.0   1.2G
    ...
"""
from __future__ import annotations

import textwrap
from typing import Any, Optional

WIDTH = 80
WORKER_ROW = "{:<13.13} {:>7} {:>5}  {:<8.8} {:>7} {:>6} {:>6} {:>5} {:>6} {:>6}"
LIMITED_ROW = "{:<8.8} {:>7} {:>5}  {:<8.8} {:>7} {:>6} {:>6} {:>5} {:>6} {:>6} {:>4}"  # + LEFT
CLIENT_ROW = "{:<13.13} {:>7}  {:<16.16} {:>10} {:>10} {:>10}"


def duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def adapt_line(state: dict) -> str:
    """What the scaler (``--adapt``) did, from its ``adapt-state.json``."""
    head = f"adapt {state.get('min')}:{state.get('max')}"
    if state.get("stopped"):
        return f"{head}: STOPPED after {state.get('failures')} failed submissions: {state.get('error')}"
    said = (f"{head}: {state.get('running', 0)} worker job(s) running, {state.get('pending', 0)} pending; "
            f"{state.get('submitted', 0)} asked for in {state.get('sbatch_calls', 0)} sbatch and "
            f"{state.get('squeue_calls', 0)} squeue call(s)")
    return said + (f"; last submission failed: {state['error']}" if state.get("error") else "")


def resources_line(res: Optional[dict]) -> str:
    """What jobs with ``resources=`` hold on a worker, where it has GPUs or
    they hold any: ``GPUs 1/4 in use (0,1,2,3), CPUs 2/8, memory 8.0G/64.0G``."""
    if not res or not (res["gpus"] or res["cpus_used"] or res["mem_used"]):
        return ""
    gpus = res["gpus"].split(",") if res["gpus"] else []
    said = [f"GPUs {res['gpus_used']}/{len(gpus)} in use ({res['gpus']})"] if gpus else []
    said.append(f"CPUs {res['cpus_used']}/{res['cpus']}")
    if res["mem"]:
        said.append(f"memory {size(res['mem_used'])}/{size(res['mem'])}")
    return ", ".join(said)


def _left(seconds: Optional[float]) -> str:
    """A worker's time left, in 4 characters: 45s, 59m, 23h, 3d."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h" if s < 86400 else f"{s // 86400}d"


def size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    return "-"


def _num(n: Any, width: int = 99) -> str:
    """``1,234`` or, when that is wider than ``width``, ``1.2k``, ``12M``, ``1.2G``..."""
    if n is None:
        return "-"
    text = f"{n:,}"
    if len(text) <= width:
        return text
    value, unit = float(n) / 1000, 0
    while value >= 999.5 and unit < 4:
        value, unit = value / 1000, unit + 1
    return f"{value:.1f}{'kMGTP'[unit]}" if value < 9.95 else f"{value:.0f}{'kMGTP'[unit]}"


def _job(w: dict, width: int = 7) -> str:
    """The oldest running job, ``+N`` more; the id's last digits when too long."""
    if w.get("job") is None:
        return "-"
    more = len(w.get("jobs") or []) - 1
    tail = f" +{more}" if more > 0 else ""
    job = str(w["job"])
    if len(job) + len(tail) > width:
        job = "…" + job[-max(1, width - len(tail) - 1):]
    return (job + tail)[-width:]


def header(snap: dict, address: str) -> list[str]:
    t, tp = snap["totals"], snap["throughput"]
    top = [f"master {address}  pid {snap['pid']}  up {duration(snap['uptime'])}"]
    if snap.get("http"):
        dash = f"dashboard {snap['http']}"
        if len(top[0]) + len(dash) + 2 <= WIDTH:
            top[0] += f"  {dash}"
        else:
            top.append(dash)
    jobs = (f"jobs  {_num(t['queued'])} queued  {_num(t['running'])} running  "
            f"{_num(t['done'])} done  {_num(t['failed'])} failed")
    rate = f"{tp['rate']:.1f} jobs/s ({_num(tp['last_minute'])} in the last minute)"
    return [*top, f"{jobs}  |  {rate}" if len(jobs) + len(rate) + 5 <= WIDTH else jobs,
            *([] if len(jobs) + len(rate) + 5 <= WIDTH else [rate])]


def render(snap: dict, address: str) -> str:
    """The whole table; every line at most ``WIDTH`` characters. Where a
    worker has a time limit, a LEFT column says how long it has (the
    worker's name gives it the room)."""
    lines = header(snap, address)
    if snap.get("adapt"):
        lines += textwrap.wrap(adapt_line(snap["adapt"]), WIDTH, subsequent_indent="  ")
    limited = any(w.get("left") is not None for w in snap["workers"])
    row = LIMITED_ROW if limited else WORKER_ROW
    lines += ["", row.format("WORKER", "PID", "EXEC", "STATE", "JOB", "AGE", "DONE", "FAIL", "CPU%", "RSS",
                             "LEFT")]
    for w in sorted(snap["workers"], key=lambda w: (str(w["host"]), w["pid"] or 0)):
        cpu = "-" if w.get("cpu") is None else f"{w['cpu']:.1f}"[-6:] if w["cpu"] < 1e5 else "99999+"
        held = w["executors"] + w.get("express", 0)  # its spare runs jobs too: counted in both
        lines.append(row.format(
            str(w["host"]), w["pid"], f"{w['running']}/{held}", w["state"], _job(w),
            duration(w["age"]), _num(w["done"], 6), _num(w["failed"], 5), cpu, size(w.get("rss")),
            _left(w.get("left"))))
    if not snap["workers"]:
        lines.append("  (no workers registered)")
    for w in sorted(snap["workers"], key=lambda w: (str(w["host"]), w["pid"] or 0)):
        said = resources_line(w.get("resources"))
        if said:
            lines += textwrap.wrap(f"{w['host']} pid {w['pid']}: {said}", WIDTH, initial_indent="  ",
                                   subsequent_indent="    ")
    for host, why in sorted((snap.get("lanes_off") or {}).items()):  # wrapped: the why matters
        lines += textwrap.wrap(f"lanes off on {host}: {why}", WIDTH, initial_indent="  ",
                               subsequent_indent="    ", break_on_hyphens=False)
    lines += ["", CLIENT_ROW.format("CLIENT", "PID", "PROGRAM", "QUEUED", "RUNNING", "DONE")]
    for c in sorted(snap["clients"], key=lambda c: (str(c["host"]), c["pid"] or 0)):
        lines.append(CLIENT_ROW.format(str(c["host"]), c["pid"], str(c.get("program") or "-"),
                                       _num(c["queued"], 10), _num(c["running"], 10), _num(c["done"], 10)))
    if not snap["clients"]:
        lines.append("  (no clients connected)")
    return "\n".join(line[:WIDTH] for line in lines)
