"""The master's side of lanes: which executor's lane each client may use
(see ``cw.lanes`` for the whole picture)."""
from __future__ import annotations

from typing import Callable

from ..protocol import Kind, Message
from .state import ClientState, ExecutorState


class Leases:
    """The master's side: which executor's lane each client may use.

    An executor with a lane waits on its host's shelf until a client of that
    host with a single job in flight is lent it; one client holds at most one
    lane, and a lane serves one client at a time. Nothing here scans: the
    shelf is keyed by host, the loans by client.
    """

    def __init__(self, send: Callable[[bytes, Message], None]) -> None:
        self.send = send
        self.shelf: dict[str, dict[bytes, ExecutorState]] = {}  # host key -> executors lent to no one
        self.held: dict[bytes, ExecutorState] = {}  # client -> the executor lent to it
        self.lent_last: dict[bytes, ExecutorState] = {}  # client -> the last executor lent to it

    def add(self, state: ExecutorState) -> None:
        """A newly registered executor: on the shelf if it has a lane."""
        key = state.info.shm
        if key and state.info.lane and state.capacity:
            self.shelf.setdefault(key, {})[state.identity] = state

    def lend(self, client: ClientState) -> None:
        """Lend ``client`` a lane of its host, if one is free."""
        key = client.info.shm
        shelf = self.shelf.get(key) if key else None
        if not shelf or client.identity in self.held:
            return
        _, state = shelf.popitem()
        if not state.capacity or state.killed:  # dying meanwhile: the next submit may find another
            return
        state.leased_to = state.lane_client = client.identity
        self.held[client.identity] = state
        self.lent_last[client.identity] = state  # its jobs may run there until it sees the lane close
        self.send(client.identity, Message(Kind.LEASE, {"lane": state.info.lane, "worker": state.name}))

    def give_back(self, client: bytes, tell: bool, shelve: bool = True) -> None:
        """End ``client``'s loan (telling it, if it still listens); the
        executor goes back on the shelf if ``shelve`` and it still takes work."""
        state = self.held.pop(client, None)
        if state is None:
            return
        state.leased_to = None
        if tell:
            self.send(client, Message(Kind.LEASE, {}))
        if shelve and state.capacity and not state.killed:
            self.add(state)

    def leave(self, client: bytes) -> None:
        """A client that left: its loan ends, and nothing of it is kept."""
        self.give_back(client, tell=False)
        self.lent_last.pop(client, None)

    def recall(self) -> None:
        """Jobs wait in the master's queue: every executor is the queue's again."""
        for client in list(self.held):
            self.give_back(client, tell=True)

    def withdraw(self, state: ExecutorState) -> None:
        """An executor that drains or is gone leaves the shelf, and its client
        is told. (What the lane held, a client learns by itself: it sees the
        lane close, and sends those jobs again through the master.)"""
        shelf = self.shelf.get(state.info.shm or "")
        if shelf is not None:
            shelf.pop(state.identity, None)
        if state.leased_to is not None:
            self.give_back(state.leased_to, tell=True, shelve=False)
