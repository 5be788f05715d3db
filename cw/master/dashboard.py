"""The master's live web dashboard: one page and ``GET /api/status``, on request only.

::

    master loop ──every TICK s──► Dashboard.publish(snapshot dict)   (an atomic swap;
                                  only while someone looked in the last WANTED s)
    HTTP threads ◄── GET /TOKEN/            the page (dashboard.html: inline CSS and JS,
                                            no asset from anywhere else); it polls
                ◄── GET /TOKEN/api/status   the latest snapshot: the JSON of `cw status --json`

The HTTP server runs in threads of the master process but never touches
the master's state: it serves the last snapshot the loop handed it. It
binds only the address asked for (default 127.0.0.1), which on a shared
node every local user can reach, so every request must carry the token
(``secrets.token_urlsafe``, compared in constant time; 403 without it),
which only ``master.json`` in the private cluster directory, ``cw
status`` and the master's log hold. It answers only requests naming a host
it is known by, so a web page elsewhere cannot read it through DNS
rebinding. One thread accepts connections and hands a connection to a
bounded pool only once its request has begun to arrive: idle connections
cost no thread, and past ``WAITING`` of them the oldest is closed. A pool
thread gives a connection ``REQUEST_SECONDS`` at most (the accepting thread
shuts it then), so requests trickled in a byte at a time cannot hold the
pool.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import queue
import secrets
import selectors
import socket
import threading
import time
from collections import OrderedDict, deque
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any, Optional

log = logging.getLogger(__name__)

WANTED = 30.0  # seconds after a request during which the master keeps publishing
STALE = 1.0  # a snapshot older than this is refreshed before it is served
POOL = 4  # threads that answer requests
QUEUED = 16  # connections with a request begun, handed to the pool, not yet taken
WAITING = 256  # connections silent yet (or waiting for the pool); past it the oldest is closed
IDLE = 5.0  # seconds a connection may stay silent, before its request and within it
REQUEST_SECONDS = 10.0  # the most a pool thread gives one connection (a request trickled in, say)

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")


def _page() -> bytes:
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


class _Server(HTTPServer):
    dashboard: "Dashboard"
    request_queue_size = 64  # the listen backlog: a burst waits in the kernel, not in threads

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A bug of ours while answering (a client gone is caught before, in ``answer``)."""
        log.exception("dashboard: error answering %s", client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6


class Dashboard:
    """Serves the page and the latest snapshot on ``host:port`` (0 = a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.page = _page()
        self.token = secrets.token_urlsafe(32)
        self.snapshot: Optional[dict] = None
        self.published = self.last_request = time.monotonic()
        self.fresh = threading.Event()
        self.server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        self.server.dashboard = self
        self.server.socket.setblocking(False)
        self.host, self.port = host, self.server.server_address[1]
        self.names = _known_names(host)
        self.stopping = False
        self.queue: queue.Queue = queue.Queue(QUEUED)
        self.busy: dict = {}  # connection -> when its pool thread gives up on it (cut by accept)
        self.threads = [threading.Thread(target=self.accept, name="cw-dashboard", daemon=True)]
        self.threads += [threading.Thread(target=self.answer, name=f"cw-dashboard-{i}", daemon=True)
                         for i in range(POOL)]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/{self.token}/"

    def start(self) -> "Dashboard":
        for thread in self.threads:
            thread.start()
        return self

    def accept(self) -> None:
        """The accepting thread: a connection goes to the pool once it has something to say."""
        sel = selectors.DefaultSelector()
        sel.register(self.server.socket, selectors.EVENT_READ)
        waiting: OrderedDict = OrderedDict()  # connection -> (address, accepted at): silent yet
        ready: deque = deque()  # (connection, address): a request begun, the pool busy
        try:
            while not self.stopping:
                for key, _ in sel.select(0.02 if ready else 0.5):
                    if key.fileobj is self.server.socket:
                        self.take(sel, waiting)
                    else:
                        sel.unregister(key.fileobj)
                        ready.append((key.fileobj, waiting.pop(key.fileobj)[0]))
                while ready and not self.queue.full():
                    self.queue.put_nowait(ready.popleft())
                deadline = time.monotonic() - IDLE
                while waiting and (len(waiting) > WAITING or next(iter(waiting.values()))[1] < deadline):
                    conn, _ = waiting.popitem(last=False)
                    sel.unregister(conn)
                    conn.close()
                while len(ready) > WAITING:  # the pool cannot keep up: the oldest are turned away
                    ready.popleft()[0].close()
                self.cut_overdue()
        finally:
            for conn in [*waiting, *(conn for conn, _ in ready)]:
                conn.close()
            sel.close()

    def cut_overdue(self) -> None:
        """Shut the connections the pool has spent ``REQUEST_SECONDS`` on: a
        request trickled in a byte at a time must not hold a pool thread."""
        now = time.monotonic()
        for conn, deadline in list(self.busy.items()):
            if deadline < now:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # its pool thread's read or write ends at once
                except OSError:
                    pass

    def take(self, sel: selectors.BaseSelector, waiting: OrderedDict) -> None:
        for _ in range(64):
            try:
                conn, address = self.server.socket.accept()
            except BlockingIOError:
                return
            except OSError as e:  # out of descriptors, say: the master's loop matters more
                log.debug("dashboard: accept failed: %s", e)
                time.sleep(0.1)
                return
            waiting[conn] = (address, time.monotonic())
            sel.register(conn, selectors.EVENT_READ)

    def answer(self) -> None:
        """A pool thread: answer the connections handed over, one at a time."""
        while True:
            item = self.queue.get()
            if item is None:
                return
            conn, address = item
            conn.setblocking(True)
            self.busy[conn] = time.monotonic() + REQUEST_SECONDS
            try:
                self.server.finish_request(conn, address)
            except OSError as e:  # the client went away, or stalled past IDLE
                log.debug("dashboard: %s left mid-request: %s", address[0], e)
            except Exception:
                self.server.handle_error(conn, address)
            finally:
                self.busy.pop(conn, None)
                self.server.shutdown_request(conn)

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
        self.stopping = True
        for thread in self.threads[1:]:
            if thread.is_alive():
                self.queue.put(None)
        for thread in self.threads:
            if thread.is_alive():
                thread.join(5)
        self.server.server_close()

    def has_token(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())  # constant time

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
    timeout = IDLE  # a client that stalls mid-request does not keep a pool thread long
    server_version = "cw-dashboard"

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        dash = self.server.dashboard
        given, slash, rest = self.path.split("?")[0].lstrip("/").partition("/")
        if not dash.host_allowed(self.headers.get("Host")):
            self.reply(421, b"unknown host name\n", "text/plain")
        elif not dash.has_token(given):
            self.reply(403, b"this dashboard's address holds a token: `cw status` prints it\n",
                       "text/plain")
        elif not slash:  # /TOKEN: the page's relative links need /TOKEN/
            self.reply(308, b"", "text/plain", location=f"/{given}/")
        elif rest in ("", "index.html"):
            self.reply(200, dash.page, "text/html; charset=utf-8")
        elif rest == "api/status":
            snap = dash.current()
            if snap is None:
                self.reply(503, b'{"error": "no snapshot yet"}\n', "application/json")
            else:
                self.reply(200, json.dumps(snap).encode(), "application/json")
        else:
            self.reply(404, b"not found\n", "text/plain")

    def reply(self, code: int, body: bytes, kind: str, location: Optional[str] = None) -> None:
        self.send_response(code)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard %s: %s", self.client_address[0], format % args)
