"""The master's part in blobs (``cw.blobs``): it routes, it holds nothing.

An executor's FETCH names the task that needs a blob; the master knows
that task's client and passes the FETCH on, naming the executor. The
client's BLOB names the executor; the master passes it on. A task the
master no longer holds, or whose client has gone, gets ERROR no-blob, and
the executor fails the job. ``blobs_routed`` and ``blob_bytes`` count what
crossed the master this way.
"""
from __future__ import annotations

from ..protocol import Blob, ErrorCode, Fetch, Kind, Message
from .state import Books


class BlobRoutes:
    def __init__(self, books: Books) -> None:
        self.books = books

    def on_fetch(self, identity: bytes, msg: Message, now: float) -> None:
        fetch: Fetch = msg.body
        state = self.books.executors.get(identity)
        if state is None:
            self.books.unknown(identity, "executor: send READY first")
            return
        state.last_seen = now
        job = state.running.get(fetch.id) if fetch.id is not None else None
        if job is None or job.client not in self.books.clients:
            self.books.refuse(identity, "no client holds this job's blob any longer", fetch.id,
                              ErrorCode.NO_BLOB)
            return
        self.books.send(job.client, Message(Kind.FETCH, {"blob": fetch.blob, "executor": identity.hex(),
                                                         "offset": fetch.offset}))

    def on_blob(self, identity: bytes, msg: Message, now: float) -> None:
        blob: Blob = msg.body
        client = self.books.clients.get(identity)
        if client is None:
            self.books.unknown(identity)
            return
        client.last_seen = now
        try:
            executor = bytes.fromhex(blob.executor or "")
        except ValueError:
            executor = b""
        if executor not in self.books.executors:
            return  # it left meanwhile: its jobs went elsewhere, and will fetch again
        self.books.counts["blobs_routed"] += blob.offset == 0  # a blob begun (its chunks follow)
        self.books.counts["blob_bytes"] += sum(map(len, msg.payload))
        header: dict = {"blob": blob.blob, "missing": True}
        if not blob.missing:
            header = {"blob": blob.blob, "offset": blob.offset, "total": blob.total}
        self.books.send(executor, Message(Kind.BLOB, header, msg.payload))
