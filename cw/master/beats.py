"""The master's heartbeats to its peers, each at a time of its own.

A peer gives the master up after ``heartbeat * liveness`` seconds without a
message from it, so each must hear from the master at least once a beat.
Any message does for a beat (``Books.spoken``: when each peer was last sent
anything), so an executor kept busy gets none. The beats are spread: each
peer is due a beat after the last thing it heard, and peers that came
together start at random points of their first beat. So 10,000 idle
executors cost 10,000 sends a second in small turns of the master's loop,
not one round over every peer that held the loop 50 to 150 ms each second.

``enrol`` (once a beat, with the purge in ``Peers.beat``) adds the peers new
since; ``send_due`` (every turn) beats those whose time has come, together
once the first is ``SLACK`` of a beat late; a peer
gone is dropped when its time comes. Where a peer may give up after two
beats (``--liveness 2``), each is beaten once a beat whatever it heard.
An executor its supervisor vouches for hears a beat every few heartbeats
only, as many as WELCOME told it to send its own (``beats_apart``): a third
of the silence after which it gives the master up.
"""
from __future__ import annotations

import heapq
import itertools
import random
from typing import Optional

from ..protocol import Kind, Message
from .state import Books

# Beats wait until the first due is this part of a beat late, then go with
# all those due: a few hundred sends a turn, not a wake-up for each peer.
SLACK = 0.05


class Beats:
    def __init__(self, books: Books) -> None:
        self.books = books
        self.due: list = []  # heap of (when, n, identity): n breaks ties, never identities
        self.enrolled: set[bytes] = set()
        self.seq = itertools.count()
        self.message = Message(Kind.HEARTBEAT)

    def known(self, identity: bytes) -> bool:
        b = self.books
        return identity in b.executors or identity in b.clients or identity in b.supervisors

    def enrol(self, now: float) -> None:
        """Peers new since the last call join, each due within a beat of what
        it last heard; the send times of peers gone are forgotten."""
        b = self.books
        for table in (b.clients, b.executors, b.supervisors):
            for identity in table:
                if identity not in self.enrolled:
                    self.enrolled.add(identity)
                    first = b.spoken.get(identity, now) + self.period(identity) * random.uniform(0.5, 1.0)
                    heapq.heappush(self.due, (first, next(self.seq), identity))
        b.spoken = {identity: at for identity, at in b.spoken.items() if self.known(identity)}

    def send_due(self, now: float) -> None:
        """Beat each peer whose time has come and that heard nothing since
        (with ``liveness`` 2: whatever it heard)."""
        b = self.books
        if not self.due or self.due[0][0] > now - b.heartbeat * SLACK:
            return
        any_since = b.liveness > 2  # else each is beaten once a beat whatever it heard
        while self.due and self.due[0][0] <= now:
            _, _, identity = heapq.heappop(self.due)
            if not self.known(identity):
                self.enrolled.discard(identity)
                b.spoken.pop(identity, None)
                continue
            period = self.period(identity)
            last = b.spoken.get(identity, -1.0)
            if any_since and last > now - period:  # it heard something within the beat: due a beat after that
                heapq.heappush(self.due, (last + period, next(self.seq), identity))
                continue
            b.send(identity, self.message)
            heapq.heappush(self.due, (now + period, next(self.seq), identity))

    def period(self, identity: bytes) -> float:
        """Seconds between a peer's beats: an executor its supervisor vouches
        for is beaten every ``beats`` heartbeats (``protocol.beats_apart``)."""
        state = self.books.executors.get(identity)
        return self.books.heartbeat * (state.beats if state is not None else 1)

    def next_due(self) -> Optional[float]:
        """When ``send_due`` next has beats to send."""
        return self.due[0][0] + self.books.heartbeat * SLACK if self.due else None
