"""Job functions for the tests: importable by workers through the client's sys.path."""
from __future__ import annotations

import os
import sys
import threading
import time


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def where():
    return os.getcwd(), list(sys.path)


def sleep(seconds, value=None):
    time.sleep(seconds)
    return value


def pid():
    return os.getpid()


def mark_and_sleep(path, seconds, value=None):
    """Say it began (a file), then sleep."""
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return value


class CustomError(Exception):
    def __init__(self, code):
        super().__init__(f"custom failure {code}")
        self.code = code


def fail(code=7):
    raise CustomError(code)


def exit_hard(code=3):
    os._exit(code)


def return_lock():
    return threading.Lock()


def _refuse_to_rebuild():
    raise RuntimeError("this exception cannot be rebuilt")


class Unrebuildable(Exception):
    def __reduce__(self):
        return (_refuse_to_rebuild, ())


def fail_unpicklable():
    raise Unrebuildable("an exception the client cannot rebuild")


def touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


def kill_self():
    os.kill(os.getpid(), 9)


def sleep_pid(seconds, tag=None):
    time.sleep(seconds)
    return tag, os.getpid()


def span(seconds, tag=None):
    """Sleep; say where and when (CLOCK_MONOTONIC: one clock for every process here)."""
    start = time.monotonic()
    time.sleep(seconds)
    return tag, os.getpid(), start, time.monotonic()


def big_result(n):
    return b"x" * n


def spawn_and_sleep(pidfile, seconds):
    import subprocess

    child = subprocess.Popen(["sleep", str(seconds)])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    time.sleep(seconds)


def kill_self_realtime():
    import signal

    os.kill(os.getpid(), signal.SIGRTMIN + 2)


def node(_=None):
    """The SLURM node a job ran on."""
    return os.environ.get("SLURMD_NODENAME")


def wait_for_file(path, value=None, timeout=60):
    """Run until ``path`` exists: a job the test holds running as long as it needs."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def shout(text):
    print(text)
    print(f"{text} on stderr", file=sys.stderr)
    return text


def scale_in_place(array, factor):
    """Change an argument in place (it must arrive writable) and return it."""
    array *= factor
    return array


def sum_dying_once(array, marker):
    """Kill the executor the first time (``marker`` does not exist yet)."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
    return int(array.sum())


def shm_files(spares=False):
    """The names of cw's job files in shared memory this executor can see
    (with ``spares``: the spare files too)."""
    import os

    from cw import shm

    if shm.host_key() is None:
        return []
    return sorted(n for n in os.listdir(shm.root()) if shm._ANY.fullmatch(n) and (spares or "-s-" not in n))


def log_pid_and_wait(path, release, timeout=60):
    """Append this executor's pid to ``path``, then run until ``release`` exists."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    wait_for_file(release, timeout=timeout)
    return os.getpid()


def big_array(n):
    """A result with an out-of-band buffer of ``n`` bytes (pushed over the direct path)."""
    import numpy

    return numpy.ones(n, dtype=numpy.uint8)


def log_start_and_end(path, release, timeout=60):
    """Append ``start PID`` to ``path``, run until ``release`` exists, append ``end PID``."""
    with open(path, "a") as f:
        f.write(f"start {os.getpid()}\n")
    wait_for_file(release, timeout=timeout)
    with open(path, "a") as f:
        f.write(f"end {os.getpid()}\n")
    return os.getpid()


def start_child(new_session=False):
    """Start ``sleep 600`` and return at once: the child's pid."""
    import subprocess

    return subprocess.Popen(["sleep", "600"], start_new_session=new_session).pid


def start_orphan():
    """Start a daemon-like grandchild (its parent, a shell, exits at once;
    it stays in the job's process group): the grandchild's pid."""
    import subprocess

    out = subprocess.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def start_child_in_thread():
    """Start ``sleep 600`` from a thread that outlives the job: the child's pid."""
    import subprocess

    started = []
    ready = threading.Event()

    def run():
        started.append(subprocess.Popen(["sleep", "600"]).pid)
        ready.set()
        time.sleep(600)

    threading.Thread(target=run, daemon=True).start()
    ready.wait(30)
    return started[0]


def start_child_and_wait(pidfile, release):
    """Start ``sleep 600``, note its pid in ``pidfile``, run until ``release`` exists."""
    import subprocess

    child = subprocess.Popen(["sleep", "600"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    wait_for_file(release)
    return child.pid


def start_child_and_die(pidfile):
    """Start ``sleep 600``, note its pid, then kill the executor under the job."""
    import subprocess

    child = subprocess.Popen(["sleep", "600"])
    with open(pidfile, "w") as f:
        f.write(str(child.pid))
    os._exit(3)


_pools: dict = {}


def pool_square(x, method="fork"):
    """``x * x`` from a multiprocessing pool of 2 kept between jobs (one per
    start method): its workers' pids and the answer."""
    import multiprocessing

    pool = _pools.get(method)
    if pool is None:
        pool = _pools[method] = multiprocessing.get_context(method).Pool(2)
    return sorted(p.pid for p in pool._pool), pool.apply_async(square, (x,)).get(30)


def pool_in_job(x, method="forkserver"):
    """``x * x`` from a pool made and closed inside the job."""
    import multiprocessing

    with multiprocessing.get_context(method).Pool(2) as pool:
        return pool.apply_async(square, (x,)).get(30)


def devices(seconds, tag=None):
    """The GPUs a job was given, and when it ran: (CUDA_VISIBLE_DEVICES, start, end, tag)."""
    start = time.time()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.time(), tag


def affinity(seconds, tag=None):
    """The CPUs a job may run on, and when it ran: (sorted CPU ids, start, end, tag)."""
    start = time.time()
    time.sleep(seconds)
    return sorted(os.sched_getaffinity(0)), start, time.time(), tag
