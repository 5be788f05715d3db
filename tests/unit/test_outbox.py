"""The executor's outbox: short jobs' results go together, none waits behind a long job."""
import threading

import pytest
from conftest import wait_for

from cw.protocol import Kind, Result
from cw.worker.outbox import HOLD_SECONDS, Flusher, Outbox


@pytest.fixture
def box():
    """An outbox whose sends land in ``box.sent``, with its flusher running."""
    sent = []
    outbox = Outbox(sent.append)
    outbox.sent = sent
    flusher = Flusher(outbox)
    flusher.start()
    yield outbox
    flusher.stop()
    flusher.join(5)
    assert not flusher.is_alive()


def test_held_results_leave_while_a_long_job_runs(box):
    box.add(Result(1, "ok", None, 1, 0.0001), [b"v"], 0.0001, 0.0)
    assert not box.due(0.0001, 0.0)  # a short job's result waits for company
    assert box.sent == []  # the executor's thread holds the socket: nothing leaves
    box.lend()  # a job runs
    try:
        wait_for(lambda: box.sent, timeout=10, what="the held result to leave")
    finally:
        box.take_back()
    assert [m.kind for m in box.sent] == [Kind.RESULT]
    assert box.sent[0].header["results"] == [Result(1, "ok", None, 1, 0.0001)]
    assert box.entries == [] and not box.held.is_set()


def test_nothing_is_sent_while_the_executors_thread_holds_the_socket(box):
    box.add(Result(1, "ok", None, 0, 0.0), [], 0.0, 0.0)
    # Several of the flusher's turns pass; it never takes the lock, so never sends.
    turns = threading.Event()
    threading.Timer(20 * HOLD_SECONDS, turns.set).start()
    turns.wait(5)
    assert box.sent == [] and box.entries
    box.flush()  # the executor's own send
    assert len(box.sent) == 1 and not box.held.is_set()
