"""The client: what runs in the user's program.

``ClusterExecutor`` (a ``concurrent.futures.Executor``) and ``ClientThread``
(the original's callback API) both stand on ``IOCore``, one background
thread that owns the socket to the master (``cw.client.iocore``), made of
the link to the master (``cw.client.link``), the jobs it holds
(``cw.client.jobs``) and the lanes it was lent (``cw.client.lane``); the
progress bar (``cw.client.progress``) is its other part.
``cw.client.ClusterExecutor``, ``cw.client.ClientThread``,
``cw.client.BaseClientThread``, ``cw.client.Client`` and
``cw.client.RemoteException`` are the original's public paths.
"""
from __future__ import annotations

from ..errors import RemoteException
from .executor import ClusterExecutor, JobInfo, SlurmExecutor, _run_chunk
from .thread import BaseClientThread, Client, ClientThread

__all__ = ["BaseClientThread", "Client", "ClientThread", "ClusterExecutor", "JobInfo", "RemoteException",
           "SlurmExecutor"]
# A chunked map's jobs name _run_chunk by its path, in pickles: it keeps the
# path it had before the client became a package, so executors and clients
# on either side of the move understand each other.
_run_chunk.__module__ = __name__
