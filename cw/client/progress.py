"""Progress of a batch of jobs on stderr: a bar on a terminal, periodic lines otherwise.

::

    cw [##########----------]  512/1000  51%  84.2/s  ETA 0:06      (a terminal)
    cw: 512/1000 (51%) done, 84.2/s, ETA 0:06                         (a log file, every 10 s)

Used by ``ClusterExecutor.map(..., progress=True)`` and
``ClientThread(..., progress=True)``; nothing is printed without them.
``total`` may grow (``add``) when jobs are submitted as they come.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Generator, Iterator, Optional, TextIO

BAR = 20


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished jobs and renders them at most every ``refresh``/``interval`` seconds."""

    def __init__(self, total: Optional[int] = None, *, stream: Optional[TextIO] = None,
                 label: str = "cw", interval: float = 10.0, refresh: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = total
        self.label = label
        self.every = refresh if self.tty else interval
        self.clock = clock
        self.done = 0
        self.started = clock()
        self.last_shown = self.started
        self.closed = False
        self.lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        """``n`` more jobs to wait for."""
        with self.lock:
            self.total = (self.total or 0) + n

    def update(self, n: int = 1) -> None:
        """``n`` more jobs finished."""
        with self.lock:
            self.done += n
            now = self.clock()
            if now - self.last_shown >= self.every and not self.closed:
                self.last_shown = now
                self.show(now)

    def close(self) -> None:
        """The final line (always shown, once)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.show(self.clock(), final=True)

    def rate(self, now: float) -> float:
        return self.done / max(now - self.started, 1e-9)

    def line(self, now: float, final: bool = False) -> str:
        rate = self.rate(now)
        total = self.total
        if final:
            count = f"{self.done}/{total}" if total is not None else str(self.done)
            return f"{self.label}: {count} done in {_duration(now - self.started)} ({rate:.1f}/s)"
        if total is None or total <= 0:
            return f"{self.label}: {self.done} done, {rate:.1f}/s"
        frac = min(1.0, self.done / total)
        eta = _duration((total - self.done) / rate) if rate > 0 and self.done < total else "-"
        if self.tty:
            filled = int(frac * BAR)
            bar = "#" * filled + "-" * (BAR - filled)
            width = len(str(total))
            return (f"{self.label} [{bar}] {self.done:>{width}}/{total} {frac:4.0%} "
                    f"{rate:.1f}/s ETA {eta}")
        return f"{self.label}: {self.done}/{total} ({frac:.0%}) done, {rate:.1f}/s, ETA {eta}"

    def show(self, now: float, final: bool = False) -> None:
        text = self.line(now, final)
        try:
            if self.tty:
                # \r and a clear-to-end-of-line redraw the bar in place.
                self.stream.write("\r" + text + "\x1b[K" + ("\n" if final else ""))
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr closed: progress is not worth failing the program for

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def total_of(iterables: tuple) -> Optional[int]:
    """The items a map over ``iterables`` yields, if each has a length."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # an iterator: no total, no ETA


def with_progress(results: Generator, total: Optional[int]) -> Iterator:
    """``results`` as they come, with a Progress bar of ``total``."""
    held: list = []  # the next value, never a local across the yield (see _results)
    with Progress(total) as bar:
        try:
            while True:
                try:
                    held.append(next(results))
                except StopIteration:
                    return
                bar.update()
                yield held.pop()
        finally:
            results.close()  # left early: the map cancels what it still holds
