"""The job functions every system runs (importable by each system's workers)."""


def noop(x=None):
    return x


def echo(data):
    return data
