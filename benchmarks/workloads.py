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
