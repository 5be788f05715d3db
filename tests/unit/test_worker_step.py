"""The supervisor's and the executor's loops, driven one ``step()`` at a time
over a fake clock, against a fake master (a ROUTER socket on loopback).

Nothing sleeps: a message that should have come is polled for with a bound,
and one that should not have come is ruled out by a marker the worker sends
after the step in question (one connection keeps its messages in order).
"""
import signal
import sys

import pytest
from fakes import T0, FakeClock, FakeMaster

from cw.protocol import Kind, Message, Status
from cw.serialize import context_frame, dumps_call, loads_value
from cw.worker import executor as executor_module
from cw.worker.executor import Executor
from cw.worker.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # an executor that does nothing


class WorkerMaster(FakeMaster):
    def __init__(self) -> None:
        super().__init__("the worker")

    def said(self, peer) -> list:
        """The kinds of what ``peer`` sent since the last look (up to a marker it sends now)."""
        peer.send(Message(Kind.STATUS))
        kinds = []
        while (kind := self.recv().kind) is not Kind.STATUS:
            kinds.append(kind)
        return kinds


@pytest.fixture
def master():
    m = WorkerMaster()
    yield m
    m.close()


@pytest.fixture
def supervisor(master):
    """A supervisor of ``procs`` sleepers (its own process groups, as executors'), on a fake clock."""
    made = []

    def make(procs: int = 1, **options) -> Supervisor:
        sup = Supervisor("127.0.0.1", master.port, procs, keys=None, clock=FakeClock(), **options)
        sup.executor_command = lambda ident, express=False: SLEEPER
        made.append(sup)
        return sup

    yield make
    for sup in made:
        for proc in sup.slots:
            if proc is not None:
                proc.kill()
                proc.wait(10)
        for word in sup.running:
            if word is not None:
                word.close()
        sup.peer.close()
        assert all(p is None or p.returncode is not None for p in sup.slots)


def test_the_supervisor_registers_on_its_first_step(master, supervisor):
    sup = supervisor(procs=2)
    sup.step()
    ready = master.recv()
    assert ready.kind is Kind.READY
    assert ready.header["capacity"] == 0 and ready.header["procs"] == 2
    assert len(sup.slots) == 3 and all(proc is not None for proc in sup.slots)  # and its spare
    sup.step()
    assert master.said(sup.peer) == []  # once


def test_the_express_spare_is_started_as_one_and_can_be_left_out(supervisor):
    sup = supervisor(procs=2, express=False)
    assert len(sup.slots) == 2
    command = Supervisor.executor_command(sup, b"e1", express=True)
    assert "--express" in command
    assert command[command.index("--prefetch") + 1] == "0" and command[command.index("--batch") + 1] == "1"
    assert "--express" not in Supervisor.executor_command(sup, b"e2")


def test_the_supervisor_heartbeats_when_the_clock_says_so(master, supervisor):
    sup = supervisor(heartbeat=1.0)
    sup.step()
    assert master.recv().kind is Kind.READY
    sup.clock.now = T0 + 0.9
    sup.step()
    assert master.said(sup.peer) == []
    sup.clock.now = T0 + 0.9 + 1.0  # a heartbeat after the marker, sent at T0 + 0.9
    sup.step()
    beat = master.recv()
    assert beat.kind is Kind.HEARTBEAT
    assert sorted(beat.header["stats"]) == sorted(i.hex() for i in sup.ids)  # with its usage, spare too


def test_a_silent_master_stops_the_supervisor_after_master_timeout(master, supervisor):
    sup = supervisor(master_timeout=5.0)
    sup.step()  # at T0: nothing heard yet, counted from the start
    assert master.recv().kind is Kind.READY
    sup.step(now=T0 + 4.0)
    master.send(Message(Kind.HEARTBEAT), to=sup.identity)
    sup.step(timeout=10.0, now=T0 + 4.0)  # heard at T0 + 4
    sup.step(now=T0 + 9.0)
    assert not sup.stopping
    sup.step(now=T0 + 9.01)
    assert sup.stopping and sup.exit_code == 3


def test_without_master_timeout_a_supervisor_waits_forever(master, supervisor):
    sup = supervisor(heartbeat=1.0, liveness=3)
    sup.step()
    assert master.recv().kind is Kind.READY
    sup.step(now=T0 + 3600.0)
    assert not sup.stopping
    # Silent past its liveness, the master may have restarted: register again.
    assert Kind.READY in master.said(sup.peer)


def test_kill_kills_the_executor_and_its_death_reaches_the_master(master, supervisor):
    sup = supervisor()
    sup.step()
    assert master.recv().kind is Kind.READY
    proc, ident = sup.slots[0], sup.ids[0]
    if sup.running[0] is not None:  # Linux: the executor's word says which job it runs
        sup.running[0][:8] = (42).to_bytes(8, "little")
    master.send(Message(Kind.KILL, {"executor": ident.hex()}), to=sup.identity)
    sup.step(timeout=10.0)
    assert proc.wait(10) == -signal.SIGKILL
    sup.step()
    died = master.recv()
    assert died.kind is Kind.DIED
    assert died.header["executor"] == ident.hex() and died.header["signal"] == signal.SIGKILL
    assert died.header.get("job", 42) == 42
    # It died at once after its start: restarted after a back-off, on the clock.
    assert sup.slots[0] is None
    sup.clock.now = T0 + 0.1
    sup.step()
    assert sup.slots[0] is None
    sup.clock.now = T0 + 0.25
    sup.step()
    assert sup.slots[0] is not None and sup.ids[0] != ident


@pytest.fixture
def executor(master, monkeypatch):
    monkeypatch.setenv("CW_LANES", "0")  # no lane socket: the master's tasks only
    ex = Executor(master.address, b"e-step", "00", heartbeat=1.0, keys=None, clock=FakeClock())
    yield ex
    ex.peer.close()


def task(*ids: int) -> Message:
    calls = [f for i in ids for f in dumps_call(abs, (-i,), {})]
    return Message(Kind.TASK, {"ids": list(ids)}, (context_frame(), *calls))


def results(msg: Message) -> dict:
    assert msg.kind is Kind.RESULT
    frames = iter(msg.payload)
    out = {}
    for result in msg.header["results"]:
        assert result.status == Status.OK.value
        out[result.id] = loads_value([next(frames) for _ in range(result.frames)])
    return out


def test_the_executor_runs_a_task_and_sends_its_result(master, executor):
    executor.step(timeout=0)
    ready = master.recv()
    assert ready.kind is Kind.READY and ready.header["capacity"] == 2
    master.send(task(7), to=b"e-step")
    executor.step(timeout=10.0)  # waits for the task, then runs it
    assert results(master.recv()) == {7: 7}
    assert not executor.tasks


def test_the_executor_heartbeats_when_the_clock_says_so(master, executor):
    executor.step(timeout=0)
    assert master.recv().kind is Kind.READY
    executor.clock.now = T0 + 0.9
    executor.step(timeout=0)
    assert master.said(executor.peer) == []
    executor.clock.now = T0 + 0.9 + 1.0
    executor.step(timeout=0)
    assert master.recv().kind is Kind.HEARTBEAT


def test_between_queued_tasks_the_master_is_heard_when_the_clock_says_so(master, executor, monkeypatch):
    monkeypatch.setattr(executor_module, "LISTEN_SECONDS", 10.0)  # far beyond a job's length
    executor.step(timeout=0)
    assert master.recv().kind is Kind.READY
    master.send(task(1, 2, 3), to=b"e-step")
    executor.step(timeout=10.0, now=T0)  # hears the task, runs job 1
    master.send(task(4), to=b"e-step")
    assert executor.peer.sock.poll(10_000)  # job 4 waits at the executor's door
    executor.step(now=T0 + 9.0)  # runs job 2, does not listen
    assert [t[0] for t in executor.tasks] == [3]
    executor.step(now=T0 + 10.0)  # listens, then runs job 3
    assert [t[0] for t in executor.tasks] == [4]
    executor.step(now=T0 + 10.0)
    done: dict = {}
    while len(done) < 4:
        msg = master.recv()
        if msg.kind is not Kind.HEARTBEAT:  # the clock jumped by heartbeats
            done.update(results(msg))
    assert done == {1: 1, 2: 2, 3: 3, 4: 4}


def _raise_unreachable():
    from cw.shm import DataUnreachable

    raise DataUnreachable("raised by the job itself")


def test_only_data_an_executor_cannot_map_comes_back_unreachable(executor):
    """UNREACHABLE (the client then sends the data inline) means the job's own
    shared-memory data could not be mapped; a job that raises the same error
    itself fails as any job does."""
    import numpy

    from cw import shm

    frames = dumps_call(len, (numpy.zeros(shm.SHARE_FROM, dtype=numpy.uint8),), {}, shared=True)
    assert isinstance(frames[1], shm.Ref)
    gone = b"cw-shm:cw-1-2-" + b"0" * 32  # a well-formed reference to no file
    status, _, _ = executor.run_task(1, (context_frame(), frames[0], gone), 1)
    shm.release(frames)
    assert status == Status.UNREACHABLE.value
    status, error, _ = executor.run_task(2, (context_frame(), *dumps_call(_raise_unreachable, (), {})), 2)
    assert status == Status.ERROR.value and "raised by the job itself" in error
