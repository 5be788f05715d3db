"""What every ``cw`` command shares: option types, common options, and the
wrapper that turns a cw failure into a one-line error."""
from __future__ import annotations

import functools
from typing import Any, Callable

import click

from .errors import CWError
from .logfiles import LEVELS

LOG_LEVELS = click.Choice(LEVELS, case_sensitive=False)


def friendly(func: Callable) -> Callable:
    """A cw failure is a one-line error, not a traceback."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CWError as e:
            raise click.ClickException(str(e)) from e
    return wrapper


MAX_PROCS = 4096  # a worker's executors: as many as a READY may declare (cw.messages.LIMITS)


class Procs(click.ParamType):
    """A positive number of executor processes, or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        from .host import cpus_available

        if isinstance(value, int):
            n = value
        elif str(value).strip().lower() == "auto":
            return cpus_available()
        else:
            try:
                n = int(value)
            except ValueError:
                self.fail(f"{value!r} is neither a number nor 'auto'", param, ctx)
        if n < 1:
            self.fail(f"{n} is not at least 1", param, ctx)
        if n > MAX_PROCS:
            self.fail(f"{n} is more executors than one worker runs (at most {MAX_PROCS})", param, ctx)
        return n


PORT = click.IntRange(0, 65535)
cluster_option = click.option("--cluster", envvar="CW_CLUSTER", default=None,
                              help="Cluster name: its directory is $CW_HOME/NAME [default: default].")
log_option = click.option("--log-level", envvar="CW_LOG_LEVEL", type=LOG_LEVELS, default="info",
                          show_default=True, help="Logging verbosity.")
insecure_option = click.option(
    "--insecure", is_flag=True, envvar="CW_INSECURE",
    help="Turn CURVE authentication and encryption off (both ends must agree). "
         "Only on an isolated, trusted network.")
SIZE = click.IntRange(1)
heartbeat_options = [
    click.option("--heartbeat", type=click.FloatRange(0.01, 3600), default=1.0, show_default=True,
                 help="Seconds between heartbeats."),
    click.option("--liveness", type=click.IntRange(2, 10_000), default=10, show_default=True,
                 help="Missed heartbeats after which a peer is presumed gone."),
]


def apply_options(options: list) -> Callable:
    def apply(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func
    return apply
