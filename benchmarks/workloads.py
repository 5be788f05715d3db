"""The job functions every system runs (importable by each system's workers)."""
import time


def noop(x=None):
    return x


def echo(data):
    return data


def sleep(seconds):
    time.sleep(seconds)


def busy(ms):
    """A CPU-bound job: spin for ``ms`` milliseconds."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def forget_home(home):
    """Remove a run's CW_HOME, and first its private /dev/shm directory
    (cw.shmdir), which would else outlive it, empty, one per run."""
    import shutil
    from pathlib import Path

    from cw import shmdir

    shmdir.remove_if_empty(Path(home))
    shutil.rmtree(home, ignore_errors=True)
