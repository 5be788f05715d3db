"""``python -m cw.executor``: an executor, as its worker's supervisor starts it.

The code is ``cw.worker.executor``; this name stays for the command line
(process lists, tests and tools that look for ``cw.executor``).
"""
from __future__ import annotations

from .worker.executor import Executor, main

__all__ = ["Executor", "main"]

if __name__ == "__main__":
    main()
