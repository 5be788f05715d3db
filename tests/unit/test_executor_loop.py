"""The executor's loop against a scripted master (a ROUTER socket on loopback)."""
import json
import threading
import time

import pytest
from fakes import FakeMaster

from cw.protocol import ErrorCode, Kind, Message, versions
from cw.serialize import context_frame, dumps_call
from cw.transport import recv_frames
from cw.worker.executor import Executor


class ScriptedMaster(FakeMaster):
    def __init__(self) -> None:
        super().__init__("the executor")

    def forget(self) -> None:
        self.send(Message(Kind.ERROR, {"error": "unknown executor", "code": ErrorCode.UNKNOWN_PEER.value}))

    def messages(self, seconds: float) -> list:
        got = []
        deadline = time.monotonic() + seconds
        while self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            got.append(Message.from_frames(recv_frames(self.sock)[1:]))
        return got


@pytest.fixture
def scripted():
    master = ScriptedMaster()
    executor = Executor(f"tcp://127.0.0.1:{master.port}", b"e-test", "00", heartbeat=30.0, keys=None)
    yield master, executor
    if not executor.peer.sock.closed:  # run() closes it as it leaves
        executor.peer.close()
    master.close()


def test_refusals_that_piled_up_draw_one_ready(scripted):
    """A master that forgot the executor refuses each of its messages; the
    executor empties its queue and registers once, not once per refusal."""
    master, executor = scripted
    executor.register()
    assert master.recv().kind is Kind.READY
    lane_task = (3, (), b"lane-client")  # a job a client sent down the lane: not the master's
    executor.tasks.extend([(1, ()), (2, ()), lane_task])
    for _ in range(5):
        master.forget()
    time.sleep(0.2)  # let all five arrive: the point is one READY for a burst
    executor.receive(5.0)
    assert list(executor.tasks) == [lane_task]
    assert [m.kind for m in master.messages(0.5)] == [Kind.READY]


def test_a_refusal_is_heard_between_queued_tasks(scripted):
    """A TASK of 40 jobs of 20 ms each: the master forgets the executor
    meanwhile, and the executor stops within about LISTEN_SECONDS, not after
    the whole batch (which the master has given to others)."""
    master, executor = scripted
    executor.register()
    assert master.recv().kind is Kind.READY
    ids = list(range(1, 41))
    calls = [f for _ in ids for f in dumps_call(time.sleep, (0.02,), {})]
    master.send(Message(Kind.TASK, {"ids": ids}, (context_frame(), *calls)))
    ran = []
    thread = threading.Thread(target=executor.run, daemon=True)
    thread.start()
    try:
        first = master.recv()
        while first.kind is Kind.READY:  # run() registers first
            first = master.recv()
        assert first.kind is Kind.RESULT  # a job ran: the batch is under way
        ran += [e.id for e in first.header["results"]]
        master.forget()
        for msg in master.messages(3.0):
            if msg.kind is Kind.RESULT:
                ran += [e.id for e in msg.header["results"]]
        assert ran == ids[:len(ran)]  # in order
        assert len(ran) < len(ids) // 2, json.dumps(ran)
    finally:
        executor.stopping = True
        master.send(Message(Kind.HEARTBEAT))  # wakes it from its wait for work
        thread.join(10)
    assert not thread.is_alive()


def test_a_vouched_executor_beats_as_often_as_its_welcome_says(scripted):
    """With a supervisor, READY says when the executor gives the master up;
    WELCOME's ``beats`` then spaces its HEARTBEATs (never past a third of
    that silence); a READY again beats every heartbeat until told anew."""
    master, executor = scripted
    executor.register()
    ready = master.recv()
    assert ready.kind is Kind.READY and ready.header["liveness"] == executor.peer.liveness == 10
    assert ready.header["heartbeat"] == 30.0
    assert executor.peer.beat_every == 30.0
    master.send(Message(Kind.WELCOME, {"session": "s", "heartbeat": 30.0, "beats": 3,
                                       **versions()}))
    executor.receive(5.0)
    assert executor.peer.beat_every == 90.0
    sent = executor.peer.last_sent
    assert executor.peer.tick(sent + 89.0) and master.messages(0.2) == []
    executor.peer.tick(sent + 91.0)
    assert [m.kind for m in master.messages(0.5)] == [Kind.HEARTBEAT]
    master.send(Message(Kind.WELCOME, {"session": "s", "heartbeat": 30.0, "beats": 1000,
                                       **versions()}))
    executor.receive(5.0)
    assert executor.peer.beat_every == 90.0  # a third of its 10 beats at most
    executor.register()
    assert executor.peer.beat_every == 30.0
