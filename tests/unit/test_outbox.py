"""The executor's outbox: short jobs' results go together, none waits behind a long job."""
import threading

from conftest import wait_for

from cw.protocol import Kind, Result
from cw.worker.outbox import HOLD_SECONDS, Flusher, Outbox


def test_held_results_leave_while_a_long_job_runs():
    sent = []
    box = Outbox(sent.append)
    flusher = Flusher(box)
    flusher.start()
    try:
        box.add(Result(1, "ok", None, 1, 0.0001), [b"v"], 0.0001, 0.0)
        assert not box.due(0.0001, 0.0)  # a short job's result waits for company
        assert sent == []  # the executor's thread holds the socket: nothing leaves
        with box.lent():  # a job runs
            wait_for(lambda: sent, timeout=10, what="the held result to leave")
        assert [m.kind for m in sent] == [Kind.RESULT]
        assert sent[0].header["results"] == [Result(1, "ok", None, 1, 0.0001)]
        assert box.entries == [] and not box.held.is_set()
    finally:
        flusher.stop()
        flusher.join(5)
    assert not flusher.is_alive()


def test_nothing_is_sent_while_the_executors_thread_holds_the_socket():
    sent = []
    box = Outbox(sent.append)
    flusher = Flusher(box)
    flusher.start()
    try:
        box.add(Result(1, "ok", None, 0, 0.0), [], 0.0, 0.0)
        # Several of the flusher's turns pass; it never takes the lock, so never sends.
        turns = threading.Event()
        threading.Timer(20 * HOLD_SECONDS, turns.set).start()
        turns.wait(5)
        assert sent == [] and box.entries
        box.flush()  # the executor's own send
        assert len(sent) == 1 and not box.held.is_set()
    finally:
        flusher.stop()
        flusher.join(5)
