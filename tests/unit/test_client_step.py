"""The client's I/O core driven one ``step()`` at a time, its thread never
started, against a scripted master (a ROUTER on loopback) and a fake clock:
every deadline (heartbeats, the master's silence, the connect timeout) is
the fake clock's, so nothing here sleeps to make time pass."""
import time

import pytest
from fakes import FakeClock, FakeMaster

from cw.client.iocore import IOCore
from cw.errors import MasterUnavailableError
from cw.protocol import Kind, Message, Status, versions
from cw.serialize import context_frame, dumps_call
from cw.transport import recv_frames

HEARTBEAT, LIVENESS, CONNECT_TIMEOUT = 1.0, 3, 30.0
QUIET_MS = 150  # how long "nothing arrives" is watched for: loopback delivers in far less


class ScriptedMaster(FakeMaster):
    def __init__(self) -> None:
        super().__init__("the client", handover=True)

    def recv(self, timeout: float = 5.0) -> Message:
        return super().recv(timeout)

    def recv_kind(self, kind: Kind, timeout: float = 5.0) -> Message:
        """The next message of ``kind``, skipping heartbeats."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg.kind is kind:
                return msg
            assert msg.kind is Kind.HEARTBEAT, f"{kind.name} expected, got {msg.kind.name}"

    def submitted(self, count: int) -> list:
        """The ids of the next SUBMITs, until ``count`` of them came."""
        ids: list = []
        while len(ids) < count:
            ids += self.recv_kind(Kind.SUBMIT).header["ids"]
        return ids

    def quiet(self) -> list:
        """The kinds of what arrives within QUIET_MS (nothing, if all is well)."""
        got = []
        while self.sock.poll(QUIET_MS):
            got.append(Message.from_frames(recv_frames(self.sock)[1:]).kind)
        return got

    def welcome(self, session: str = "s1") -> None:
        self.send(Message(Kind.WELCOME, {"session": session, "heartbeat": 10.0,
                                         "max_message_size": 1 << 30, **versions()}))

    def result(self, jid: int, value: bytes) -> None:
        self.send(Message(Kind.RESULTS, {"results": [[jid, Status.OK.value, None, 1]]}, (value,)))


class Rig:
    def __init__(self) -> None:
        self.master = ScriptedMaster()
        self.clock = FakeClock()
        self.results: list = []
        self.core = IOCore("127.0.0.1", self.master.port, on_result=self.on_result,
                           on_started=lambda ids, worker: None, heartbeat=HEARTBEAT,
                           liveness=LIVENESS, connect_timeout=CONNECT_TIMEOUT, keys=None,
                           clock=self.clock)

    def on_result(self, jid, status, payload, error, *extra) -> None:
        self.results.append((jid, status, [bytes(f) for f in payload], error))

    def step_until(self, done, what: str, seconds: float = 5.0) -> None:
        """Step (each turn waits 20 ms at most) until ``done()``; the bound is real time."""
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, f"no {what} after {seconds} s of turns"
            self.core.step(0.02)

    def connect(self, session: str = "s1") -> None:
        """HELLO out, WELCOME back: the core is connected."""
        self.core.open(self.clock())
        assert self.master.recv().kind is Kind.HELLO
        self.master.welcome(session)
        self.step_until(self.core.link.connected.is_set, "WELCOME taken in")

    def close(self) -> None:
        with self.core.lock:
            self.core.shutdown()  # the core's socket, its monitor, its wake-up pair
        self.master.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


CONTEXT = context_frame()  # one object, as the client's: jobs that share it share a SUBMIT


def job(x: int) -> tuple:
    return (CONTEXT, *dumps_call(abs, (x,), {}))


def test_hello_welcome_submit_results(rig):
    """A job submitted before WELCOME waits for it, goes out as SUBMIT, and
    the RESULTS of it reaches on_result."""
    core, master = rig.core, rig.master
    core.open(rig.clock())
    hello = master.recv()
    assert hello.kind is Kind.HELLO and hello.header["session"] == core.link.identity.hex()
    core.submit(1, job(-1), {})  # not connected: queued for the I/O thread
    core.step(0.5)
    assert 1 in core.jobs.pending and not core.settled.is_set()
    assert master.quiet() == []  # held, not sent: no master said WELCOME yet
    master.welcome()
    rig.step_until(core.settled.is_set, "WELCOME taken in")
    submit = master.recv_kind(Kind.SUBMIT)
    assert submit.header["ids"] == [1]
    master.result(1, b"one")
    rig.step_until(lambda: rig.results, "result")
    assert rig.results == [(1, Status.OK, [b"one"], None)]
    assert core.jobs.pending == {}


def test_a_job_submitted_while_idle_goes_out_from_the_user_thread(rig):
    rig.connect()
    rig.core.submit(2, job(-2), {})  # nothing in flight: sent directly, no turn needed
    assert rig.master.recv_kind(Kind.SUBMIT).header["ids"] == [2]


def test_a_silent_master_is_redialled_and_the_held_jobs_resubmitted(rig):
    """Past heartbeat * liveness of silence (by the fake clock) the core
    resets its socket and says HELLO; after the WELCOME of a restarted
    master it sends every job it holds again: the client is the source of truth."""
    core, master, clock = rig.core, rig.master, rig.clock
    rig.connect("s1")
    core.submit(3, job(-3), {})
    core.submit(4, job(-4), {})
    rig.step_until(lambda: not core.commands, "commands drained")
    assert master.submitted(2) == [3, 4]  # the first directly, the second by the turn
    old = core.link.sock
    clock.now += HEARTBEAT * LIVENESS - 0.5  # silent, not long enough
    core.step(0.0)
    assert core.link.sock is old and core.link.connected.is_set()
    clock.now += 1.0  # now past heartbeat * liveness
    core.step(0.0)
    assert core.link.sock is not old and not core.link.connected.is_set()
    assert master.recv_kind(Kind.HELLO).header["session"] == core.link.identity.hex()
    master.welcome("s2")  # a restarted master: it knows none of our jobs
    rig.step_until(core.link.connected.is_set, "second WELCOME taken in")
    assert master.recv_kind(Kind.SUBMIT).header["ids"] == [3, 4]  # one batch: one context
    assert core.link.session == "s2" and set(core.jobs.pending) == {3, 4}


def test_heartbeats_follow_the_fake_clock(rig):
    """A HEARTBEAT goes out when one is due by the injected clock, and only then."""
    core, master, clock = rig.core, rig.master, rig.clock
    rig.connect()
    assert master.quiet() == []
    start = clock.now
    for _ in range(3):  # turns at the same instant: nothing is due
        core.step(0.0)
    clock.now = start + HEARTBEAT * 0.9
    core.step(0.0)
    assert master.quiet() == []
    clock.now = start + HEARTBEAT
    core.step(0.0)
    assert master.recv(1.0).kind is Kind.HEARTBEAT
    core.step(0.0)  # just sent: not due again until another heartbeat has passed
    assert master.quiet() == []
    clock.now += HEARTBEAT
    core.step(0.0)
    assert master.recv(1.0).kind is Kind.HEARTBEAT


def test_hello_is_repeated_until_welcome_by_the_fake_clock(rig):
    core, master, clock = rig.core, rig.master, rig.clock
    core.open(clock())
    assert master.recv().kind is Kind.HELLO
    core.step(0.0)
    assert master.quiet() == []
    clock.now += max(1.0, HEARTBEAT)
    core.step(0.0)
    assert master.recv(1.0).kind is Kind.HELLO


def test_no_welcome_within_the_connect_timeout_fails_the_jobs_held(rig):
    core, clock = rig.core, rig.clock
    core.open(clock())
    core.submit(5, job(-5), {})
    core.step(0.0)
    clock.now += CONNECT_TIMEOUT - 1
    core.step(0.0)
    assert rig.results == []
    clock.now += 2
    core.step(0.0)
    [(jid, status, payload, error)] = rig.results
    assert (jid, status, payload) == (5, Status.LOST, [])
    assert isinstance(error, MasterUnavailableError) and "no cw master answered" in str(error)
    assert core.jobs.pending == {}
