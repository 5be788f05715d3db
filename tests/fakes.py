"""Stand-ins that unit tests drive cw's loops against, turn by turn:
a clock that moves only when told, and a master that is a bare socket."""
from __future__ import annotations

from typing import Optional

import zmq

from cw.protocol import Message
from cw.transport import recv_frames, send_frames

T0 = 1000.0


class FakeClock:
    """Injected as ``clock=``: it reads ``now``, which the test sets."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeMaster:
    """A ROUTER bound on 127.0.0.1, playing the master: it hears whoever dials
    it, and answers the peer it heard last unless told whom (``to``)."""

    def __init__(self, who: str = "the peer", handover: bool = False) -> None:
        self.who = who
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.linger = 0
        if handover:  # as the master: a redialling peer takes its name back
            self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.peer = b""

    def recv(self, timeout: float = 10.0) -> Message:
        assert self.sock.poll(int(timeout * 1000)), f"{self.who} said nothing"
        frames = recv_frames(self.sock)
        self.peer = bytes(frames[0])
        return Message.from_frames(frames[1:])

    def send(self, msg: Message, to: Optional[bytes] = None) -> None:
        send_frames(self.sock, [self.peer if to is None else to, *msg.to_frames()])

    def close(self) -> None:
        self.sock.close()
