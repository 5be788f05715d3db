"""Regenerate the README's pictures, docs/dashboard.png and docs/status.png.

    python docs/screenshots.py        (needs Debian's chromium)

Starts a local cluster (2 workers x 2 executors, dashboard on), runs a mixed
workload for a while, then photographs the dashboard and `cw status`.
"""
from __future__ import annotations

import html
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def work(x: int) -> int:
    time.sleep(random.uniform(0.02, 0.4))
    if x % 53 == 0:
        raise ValueError(f"item {x} is unlucky")
    return x


def shoot(url: str, out: Path, size: str, wait_ms: int = 2500) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", *FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=120)


def terminal_page(text: str) -> str:
    return ("<!doctype html><meta charset=utf-8><body style='margin:0;background:#1e1e1e'>"
            "<pre style='margin:0;padding:14px 16px;color:#e6e6e6;font:14px/1.35 monospace'>"
            f"$ cw status\n{html.escape(text)}</pre>")


def main() -> None:
    from cw.client import ClusterExecutor
    from cw.cluster import read_master
    from cw.launch import local

    os.environ["CW_HOME"] = tempfile.mkdtemp(prefix="cw-shots-")
    os.environ["CW_HTTP_PORT"] = "0"
    local.start(2, procs=2, port=0)
    try:
        url = read_master()["http"]
        with ClusterExecutor() as ex:
            futures = [ex.submit(work, i) for i in range(2000)]
            threading.Event().wait(20)  # let the throughput chart fill
            shoot(url, HERE / "dashboard.png", "1100,860")
            status = subprocess.run([sys.executable, "-m", "cw.cli", "status"], capture_output=True,
                                    text=True, check=True).stdout
            for f in futures:
                f.cancel()
        page = Path(os.environ["CW_HOME"]) / "status.html"
        page.write_text(terminal_page(status))
        shoot(page.as_uri(), HERE / "status.png", "720,300", wait_ms=200)
        print(status)
    finally:
        local.stop()


if __name__ == "__main__":
    main()
