"""The job functions every system runs (importable by each system's workers)."""
import time


def noop(x=None):
    return x


def echo(data):
    return data


def sleep(seconds):
    time.sleep(seconds)
