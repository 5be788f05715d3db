"""The master's live web dashboard: one page and ``GET /api/status``, on request only.

::

    master loop ──every TICK s──► Dashboard.publish(snapshot dict)   (an atomic swap;
                                  only while someone looked in the last WANTED s)
    HTTP thread ◄── GET /            the page (dashboard.html: inline CSS and JS, no
                                     asset from anywhere else); it polls /api/status
                ◄── GET /api/status  the latest snapshot: the JSON of `cw status --json`

The HTTP server runs in its own thread of the master process but never
touches the master's state: it serves the last snapshot the loop handed it.
It binds only the address asked for (default 127.0.0.1) and answers only
requests naming a host it is known by, so a web page elsewhere cannot read
it through DNS rebinding.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Optional

log = logging.getLogger(__name__)

WANTED = 30.0  # seconds after a request during which the master keeps publishing
STALE = 1.0  # a snapshot older than this is refreshed before it is served

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")


def _page() -> bytes:
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: "Dashboard"


class _Server6(_Server):
    address_family = socket.AF_INET6


class Dashboard:
    """Serves the page and the latest snapshot on ``host:port`` (0 = a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.page = _page()
        self.snapshot: Optional[dict] = None
        self.published = self.last_request = time.monotonic()
        self.fresh = threading.Event()
        self.server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        self.server.dashboard = self
        self.host, self.port = host, self.server.server_address[1]
        self.names = _known_names(host)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="cw-dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "Dashboard":
        self.thread.start()
        return self

    def publish(self, snapshot: dict) -> None:
        """Called by the master's loop: a new dict each time, never changed after."""
        self.snapshot = snapshot
        self.published = time.monotonic()
        self.fresh.set()

    def wanted(self) -> bool:
        """Is anyone looking? (Building snapshots for nobody costs a big master.)"""
        return time.monotonic() - self.last_request < WANTED

    def current(self) -> Optional[dict]:
        """In the HTTP thread: the latest snapshot, waiting briefly for a fresh one."""
        self.last_request = time.monotonic()
        if self.snapshot is None or self.last_request - self.published > STALE:
            self.fresh.clear()
            self.fresh.wait(2 * STALE)
        return self.snapshot

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def host_allowed(self, header: Optional[str]) -> bool:
        if not header:
            return True  # HTTP/1.0 clients (curl -0) send none; browsers always do
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        name = name.strip("[]").lower()
        try:
            ipaddress.ip_address(name)
            return True  # an address literal cannot be rebound
        except ValueError:
            return name in self.names


def _known_names(host: str) -> set:
    names = {"localhost", host.lower()}
    for name in (socket.gethostname(), socket.getfqdn()):
        names.update({name.lower(), name.split(".")[0].lower()})
    return names


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that stalls mid-request does not keep a thread forever
    server_version = "cw-dashboard"

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        dash = self.server.dashboard
        if not dash.host_allowed(self.headers.get("Host")):
            self.reply(421, b"unknown host name\n", "text/plain")
        elif self.path in ("/", "/index.html"):
            self.reply(200, dash.page, "text/html; charset=utf-8")
        elif self.path.split("?")[0] == "/api/status":
            snap = dash.current()
            if snap is None:
                self.reply(503, b'{"error": "no snapshot yet"}\n', "application/json")
            else:
                self.reply(200, json.dumps(snap).encode(), "application/json")
        else:
            self.reply(404, b"not found\n", "text/plain")

    def reply(self, code: int, body: bytes, kind: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard %s: %s", self.client_address[0], format % args)
