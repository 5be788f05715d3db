"""The master's scheduling, driven one ``step()`` at a time with real sockets on loopback."""
import contextlib
import os
import time

import pytest
import zmq

from cw.master import Master
from cw.master.scheduler import ANNOUNCE_AFTER
from cw.protocol import MAGIC, ErrorCode, Kind, Message, Status, beats_apart, job_runs, versions

PEER = {"host": "test", "pid": 1, **versions()}


@contextlib.contextmanager
def running_master(**options):
    m = Master("127.0.0.1", 0, heartbeat=1000.0, **options)  # heartbeats out of the way
    m.test_peers = []
    try:
        yield m
    finally:
        for peer in m.test_peers:
            peer.sock.close()
        m.close()


@pytest.fixture
def master():
    with running_master() as m:
        yield m


class Peer:
    def __init__(self, master: Master, prefix: bytes) -> None:
        self.master = master
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.identity = prefix + os.urandom(4)
        self.sock.linger = 0
        self.sock.connect(f"tcp://127.0.0.1:{master.port}")
        master.test_peers.append(self)
        self.inbox: list = []

    def send(self, kind: Kind, header: dict | None = None, *payload: bytes) -> None:
        if kind is Kind.RESULT and header and "id" in header:  # one result, as a batch of one
            header = {"results": [[header["id"], header["status"], header.get("error"), len(payload),
                                   header.get("ran")]]}
        self.sock.send_multipart(Message(kind, header or {}, payload).to_frames())

    def send_raw(self, frames: list) -> None:
        self.sock.send_multipart(frames)

    def messages(self):
        """What arrived, with each RESULTS and TASK batch split into single ones."""
        while self.sock.poll(0):
            msg = Message.from_frames(self.sock.recv_multipart())
            if msg.kind is Kind.TASK:
                for context, run in job_runs(msg.body, msg.payload):
                    for tid, frames in run:
                        yield Message(Kind.TASK, {"id": tid}, (context, *frames))
                continue
            if msg.kind is not Kind.RESULTS:
                yield msg
                continue
            frames = iter(msg.payload)
            for result in msg.header["results"]:
                n = result.frames
                header = {"id": result.id, "status": result.status,
                          **({"error": result.error} if result.error else {}),
                          **({"worker": result.worker} if result.worker else {})}
                yield Message(Kind.RESULT, header, tuple(next(frames) for _ in range(n)))

    def recv(self, kinds=None) -> Message:
        """Step the master until this peer gets a message (of one of ``kinds``)."""
        for _ in range(500):
            if not self.inbox:
                self.master.step(timeout=0.01)
                self.inbox.extend(self.messages())
            while self.inbox:
                msg = self.inbox.pop(0)
                if kinds is None or msg.kind in kinds:
                    return msg
        raise AssertionError("no message arrived")

    def nothing(self, kinds) -> bool:
        for _ in range(20):
            self.master.step(timeout=0.005)
            self.inbox.extend(self.messages())
        return not any(m.kind in kinds for m in self.inbox)


def client(master):
    peer = Peer(master, b"c")
    peer.send(Kind.HELLO, {"session": "s", **PEER})
    assert peer.recv().kind is Kind.WELCOME
    return peer


def executor(master, capacity=1):
    peer = Peer(master, b"e")
    peer.send(Kind.READY, {"capacity": capacity, "supervisor": "", **PEER})
    return peer


def submit(peer, jid, retries=2):
    peer.send(Kind.SUBMIT, {"ids": [jid], "retries": retries}, b"ctx", f"call{jid}".encode())


def run(ex, status="ok", value=b"v"):
    """Receive one TASK on an executor and answer it; return its payload."""
    task = ex.recv({Kind.TASK})
    ex.send(Kind.RESULT, {"id": task.header["id"], "status": status}, value)
    return bytes(task.payload[1])


def test_jobs_run_first_in_first_out(master):
    c = client(master)
    for jid in range(1, 6):
        submit(c, jid)
    ex = executor(master)
    assert [run(ex) for _ in range(5)] == [f"call{j}".encode() for j in range(1, 6)]
    got = [c.recv({Kind.RESULT}).header["id"] for _ in range(5)]
    assert got == [1, 2, 3, 4, 5]


def test_clients_take_turns(master):
    a, b = client(master), client(master)
    for jid in range(1, 5):
        submit(a, jid)
    submit(b, 100)
    ex = executor(master)
    order = [run(ex) for _ in range(5)]
    assert order.index(b"call100") == 1  # b's one job does not wait for all of a's


def test_result_payload_is_routed_untouched_and_a_quick_job_names_its_worker_there():
    now = [1000.0]  # the master's clock stands still: the job is quick
    with running_master(clock=lambda: now[0]) as m:
        c = client(m)
        submit(c, 9)
        ex = executor(m)
        run(ex, value=b"\x00opaque\xff")
        res = c.recv({Kind.RESULT})
        assert res.header == {"id": 9, "status": "ok", "worker": "test:1"}
        assert res.payload[0] == b"\x00opaque\xff"
        now[0] += ANNOUNCE_AFTER
        assert c.nothing({Kind.STARTED})  # its result said it all


def test_a_job_still_running_after_a_moment_is_announced_once_as_started():
    now = [1000.0]
    with running_master(clock=lambda: now[0]) as m:
        c = client(m)
        submit(c, 9)
        ex = executor(m)
        task = ex.recv({Kind.TASK})
        assert c.nothing({Kind.STARTED})
        now[0] += ANNOUNCE_AFTER
        assert c.recv({Kind.STARTED}).header == {"ids": [9], "worker": "test:1"}
        ex.send(Kind.RESULT, {"id": task.header["id"], "status": "ok"}, b"v")
        assert c.recv({Kind.RESULT}).header == {"id": 9, "status": "ok"}  # named already
        now[0] += ANNOUNCE_AFTER
        assert c.nothing({Kind.STARTED})


def test_cancel_removes_a_queued_job(master):
    c = client(master)
    submit(c, 1)
    submit(c, 2)
    c.send(Kind.CANCEL, {"id": 1})
    res = c.recv({Kind.RESULT})
    assert res.header == {"id": 1, "status": Status.CANCELLED.value}
    ex = executor(master)
    assert run(ex) == b"call2"
    assert c.recv({Kind.RESULT}).header["id"] == 2
    assert master.snapshot()["queued"] == 0


def test_dead_executor_job_is_requeued_then_lost_after_retries(master):
    c = client(master)
    submit(c, 1, retries=1)
    for _ in range(2):
        ex = executor(master)
        ex.recv({Kind.TASK})
        sup = Peer(master, b"s")
        sup.send(Kind.DIED, {"executor": ex.sock.identity.hex(), "exitcode": 0, "signal": 9})
    res = c.recv({Kind.RESULT})
    assert res.header["status"] == "lost" and "signal 9" in res.header["error"]
    assert master.counts["requeued"] == 1


def test_late_duplicate_result_is_dropped(master):
    c = client(master)
    submit(c, 1)
    ex1 = executor(master)
    task = ex1.recv({Kind.TASK})
    Peer(master, b"s").send(Kind.DIED, {"executor": ex1.sock.identity.hex(), "exitcode": 1})
    ex2 = executor(master)
    run(ex2)
    assert c.recv({Kind.RESULT}).header["id"] == 1
    ex1.send(Kind.RESULT, {"id": task.header["id"], "status": "ok"}, b"late")
    assert c.nothing({Kind.RESULT})


def test_resubmitted_job_is_kept_once(master):
    c = client(master)
    submit(c, 1)
    submit(c, 1)
    c.nothing({Kind.RESULT})
    assert master.snapshot()["queued"] == 1


def test_malformed_message_is_counted_and_answered(master):
    c = client(master)
    c.send_raw([MAGIC + b"S{oops"])
    err = c.recv({Kind.ERROR})
    assert err.header["code"] == ErrorCode.MALFORMED.value and "JSON" in err.header["error"]
    c.send_raw([b"garbage"])
    c.recv({Kind.ERROR})
    assert master.counts["malformed"] == 2
    submit(c, 1)
    run(executor(master))
    assert c.recv({Kind.RESULT}).header["status"] == "ok"


def test_an_executor_its_supervisor_says_is_stopped_loses_its_voucher_after_the_window():
    now = [1000.0]
    with running_master(clock=lambda: now[0]) as master:
        c, sup, ex, first, second = two_tasks(master)
        window = master.heartbeat * master.liveness
        stopped = {"stats": {ex.sock.identity.hex(): {"cpu": 0.0, "rss": 1 << 20, "stopped": 1}}}

        def beat(at, stats):
            """The client and the supervisor beat a moment before ``at`` (the
            master hears both, however loaded the machine), then the master
            checks its peers at ``at``. Beats come every half window at most,
            so that the master's own checks in its steps drop no live peer."""
            now[0] = at - 0.001
            sup.send(Kind.HEARTBEAT, stats)
            c.send(Kind.HEARTBEAT)  # the client is alive
            heard = (master.clients[c.sock.identity], master.supervisors[sup.sock.identity])
            for _ in range(500):
                if all(peer.last_seen == now[0] for peer in heard):
                    break
                master.step(timeout=0.01)
            assert all(peer.last_seen == now[0] for peer in heard)
            now[0] = at
            master.peers.beat(at)

        for half in (0.5, 1.0):
            beat(1000.0 + half * window, {"stats": {}})  # busy: it says nothing, its supervisor vouches
        beat(1000.0 + 1.5 * window, stopped)  # stopped just now: still vouched for
        assert ex.sock.identity in master.executors
        beat(1000.0 + 2.0 * window, {"stats": {}})  # it ran again: a short stop costs nothing
        beat(1000.0 + 2.5 * window, stopped)
        beat(1000.0 + 3.0 * window, stopped)
        assert ex.sock.identity in master.executors
        beat(1000.0 + 3.6 * window, stopped)  # stopped for the whole window, and silent: dropped
        assert ex.sock.identity not in master.executors
        res = c.recv({Kind.RESULT}).header  # charged to the job it ran (no retries left), as a death
        assert (res["id"], res["status"]) == (1, "lost")


def test_each_peer_hears_from_the_master_a_beat_after_what_it_heard_last():
    """Beats are due per peer, a beat after the last message it was sent:
    none goes to an executor a TASK reached since; peers that came together
    are due at different times (no round over all of them at once); a peer
    gone is beaten no more."""
    now = [1000.0]  # the master's clock: moved by the test alone
    with running_master(clock=lambda: now[0]) as master:
        hb = master.heartbeat
        master.next_beat = float("inf")  # enrolment is this test's alone
        c = client(master)
        execs = [executor(master) for _ in range(20)]
        for _ in range(500):
            if len(master.executors) == 20:
                break
            master.step(timeout=0.01)
        master.beats.enrol(now[0])
        dues = sorted(when for when, _, _ in master.beats.due)
        assert len(dues) == 21 and 1000 + hb / 2 <= dues[0] and dues[-1] <= 1000 + hb
        assert dues[-1] - dues[0] > hb / 10  # spread over the beat, not one burst
        sent = []  # (identity, kind) of what the master sends, as it sends it
        send = master.books.send
        master.books.send = lambda identity, msg, **kw: (sent.append((identity, msg.kind)),
                                                         send(identity, msg, **kw))

        def beats(at):
            now[0] = at
            sent.clear()
            master.beats.send_due(at)
            return {identity for identity, kind in sent if kind is Kind.HEARTBEAT}

        ids = {c.sock.identity, *(e.sock.identity for e in execs)}
        assert beats(1000 + hb * 0.49) == set()  # the WELCOME does for a beat
        assert beats(1000 + hb) == ids  # nothing since: a beat each
        assert beats(1000 + hb * 1.5) == set()
        now[0] = 1000 + hb * 1.6
        submit(c, 1)
        for _ in range(500):
            takers = [e for e in execs if master.executors[e.sock.identity].running]
            if takers:
                break
            master.step(timeout=0.01)
        (taker,) = takers
        assert beats(1000 + hb * 2.01) == set()  # due at 2 beats: together, once the first is 5% late
        assert beats(1000 + hb * 2.06) == ids - {taker.sock.identity}  # its TASK did for a beat
        assert beats(1000 + hb * 2.7) == {taker.sock.identity}  # a beat after its TASK
        gone = execs[-1]
        gone.send(Kind.BYE)
        for _ in range(500):
            if gone.sock.identity not in master.executors:
                break
            master.step(timeout=0.01)
        # The client heard its job's STARTED at 2.7 beats (the master's turns since).
        assert beats(1000 + hb * 3.2) == ids - {taker.sock.identity, gone.sock.identity, c.sock.identity}
        assert gone.sock.identity not in master.beats.enrolled


def test_an_executor_its_supervisor_vouches_for_beats_every_few_heartbeats_both_ways():
    """10,000 idle executors beating once a heartbeat each way cost the
    master as many messages as its dispatch. One that its supervisor vouches
    for (and says when it gives the master up) is told to beat, and is
    beaten, a third of that silence apart; it is not taken for dead."""
    now = [1000.0]
    with running_master(clock=lambda: now[0], liveness=10) as master:
        hb = master.heartbeat
        master.next_beat = float("inf")  # beats and purges are this test's alone
        sup = Peer(master, b"s")
        sup.send(Kind.READY, {"capacity": 0, **PEER})
        vouched = Peer(master, b"e")
        vouched.send(Kind.READY, {"capacity": 1, "supervisor": sup.sock.identity.hex(), "liveness": 9,
                                  "heartbeat": hb, **PEER})
        # One that gives the master up 4 times sooner (its own shorter beat) keeps every beat.
        hasty = Peer(master, b"e")
        hasty.send(Kind.READY, {"capacity": 1, "supervisor": sup.sock.identity.hex(), "liveness": 9,
                                "heartbeat": hb / 4, **PEER})
        alone = executor(master)  # without a supervisor (or an older executor): every heartbeat
        assert vouched.recv({Kind.WELCOME}).header["beats"] == beats_apart(9 * hb, hb) == 3
        assert "beats" not in hasty.recv({Kind.WELCOME}).header
        assert "beats" not in alone.recv({Kind.WELCOME}).header
        master.beats.enrol(now[0])
        sent = []
        send = master.books.send
        master.books.send = lambda identity, msg, **kw: (sent.append((identity, msg.kind)),
                                                         send(identity, msg, **kw))
        heard = {vouched.sock.identity: 0, alone.sock.identity: 0}
        sup_beat = 1000 + hb
        while now[0] < 1000 + 12 * hb:  # the clock jumps to what is due next, as the loop's wait does
            now[0] = min(master.beats.next_due(), sup_beat)
            if now[0] == sup_beat:
                sup.send(Kind.HEARTBEAT)  # the supervisor beats; its executor says nothing
                alone.send(Kind.HEARTBEAT)  # as one without a supervisor must
                sup_beat += hb
            master.step(timeout=0.01)
            master.peers.beat(now[0])
            master.beats.send_due(now[0])
            for identity, kind in sent:
                if kind is Kind.HEARTBEAT and identity in heard:
                    heard[identity] += 1
            sent.clear()
        assert 11 <= heard[alone.sock.identity] <= 12 and 3 <= heard[vouched.sock.identity] <= 4
        assert vouched.sock.identity in master.executors  # 12 beats silent, vouched for


def test_submit_from_unknown_peer_asks_for_hello(master):
    stranger = Peer(master, b"c")
    submit(stranger, 1)
    assert stranger.recv().header["code"] == ErrorCode.UNKNOWN_PEER.value
    assert master.snapshot()["queued"] == 0


def test_silent_client_is_dropped_and_its_queue_cleared(master):
    c = client(master)
    submit(c, 1)
    c.nothing({Kind.RESULT})
    now = master.clock() + master.heartbeat * (master.liveness + 1)
    master.peers.beat(now)
    assert master.clients == {} and master.sched.queued == 0


def test_python_minor_mismatch_is_warned_once(master, caplog):
    header = {"session": "s", **PEER, "python": "3.1.0"}
    for _ in range(2):
        peer = Peer(master, b"c")
        peer.send(Kind.HELLO, header)
        assert peer.recv().kind is Kind.WELCOME
    warnings = [r for r in caplog.records if "runs Python 3.1.0" in r.getMessage()]
    assert len(warnings) == 1


def test_oversized_message_is_dropped_and_its_job_fails(caplog):
    from cw.master import Limits

    with running_master(limits=Limits(max_message_size=1000)) as m:
        c = client(m)
        c.send(Kind.SUBMIT, {"ids": [3]}, b"ctx", b"x" * 2000)
        res = c.recv({Kind.RESULT})
        assert res.header["id"] == 3 and res.header["status"] == "error"
        assert "max-message-size" in res.header["error"] and not res.payload
        assert m.counts["malformed"] == 1 and m.snapshot()["queued"] == 0


def test_cancel_of_an_unknown_job_is_counted_and_answered(master):
    c = client(master)
    c.send(Kind.CANCEL, {"id": 77})
    err = c.recv({Kind.ERROR})
    assert err.header["code"] == ErrorCode.UNKNOWN_JOB.value and err.header["id"] == 77
    assert master.counts["unknown_job"] == 1 and master.malformed[c.sock.identity] == 1


def test_results_of_a_big_batch_come_in_chunks_under_the_header_limit():
    from cw.master import Limits

    with running_master(limits=Limits(max_jobs_per_client=10)) as m:
        c = client(m)
        ids = list(range(1, 2001))
        c.send(Kind.SUBMIT, {"ids": ids}, b"ctx", *[b"call"] * 2000)
        got = [c.recv({Kind.RESULT}) for _ in range(1990)]
        assert sorted(r.header["id"] for r in got) == ids[10:]
        assert all("--max-jobs-per-client" in r.header["error"] for r in got)


def two_tasks(master):
    """A client with jobs 1 and 2 on one executor: 1 running, 2 prefetched
    (its jobs are known to be short: job 99 ran in a millisecond)."""
    c = client(master)
    sup = Peer(master, b"s")
    sup.send(Kind.READY, {"capacity": 0, **PEER})
    ex = Peer(master, b"e")
    ex.send(Kind.READY, {"capacity": 2, "supervisor": sup.sock.identity.hex(), **PEER})
    submit(c, 99)
    task = ex.recv({Kind.TASK})
    ex.send(Kind.RESULT, {"id": task.header["id"], "status": "ok", "ran": 0.001}, b"v")
    assert c.recv({Kind.RESULT}).header["id"] == 99
    submit(c, 1, retries=0)
    submit(c, 2, retries=0)
    first, second = ex.recv({Kind.TASK}), ex.recv({Kind.TASK})
    return c, sup, ex, first, second


def test_force_cancel_of_a_prefetched_job_spares_the_running_one(master):
    c, sup, ex, first, second = two_tasks(master)
    c.send(Kind.CANCEL, {"id": 2, "force": True})
    res = c.recv({Kind.RESULT}).header
    assert (res["id"], res["status"]) == (2, "cancelled")
    assert sup.nothing({Kind.KILL}) and master.counts["killed"] == 0
    ex.send(Kind.RESULT, {"id": first.header["id"], "status": "ok"}, b"v")
    res = c.recv({Kind.RESULT}).header
    assert (res["id"], res["status"]) == (1, "ok")


def test_a_prefetched_job_is_announced_a_moment_after_the_one_before_it_ended():
    """Counted from when it went out, a stream of 1 ms jobs had a STARTED
    for one job in four: those that waited their turn behind another."""
    now = [1000.0]
    with running_master(clock=lambda: now[0]) as m:
        c, sup, ex, first, second = two_tasks(m)
        now[0] += ANNOUNCE_AFTER * 0.8
        ex.send(Kind.RESULT, {"id": first.header["id"], "status": "ok", "ran": 0.004}, b"v")
        assert c.recv({Kind.RESULT}).header == {"id": 1, "status": "ok", "worker": "test:1"}
        now[0] += ANNOUNCE_AFTER * 0.8  # job 2 went out 1.6 moments ago, and started 0.8 ago
        assert c.nothing({Kind.STARTED})
        now[0] += ANNOUNCE_AFTER * 0.4
        assert c.recv({Kind.STARTED}).header == {"ids": [2], "worker": "test:1"}
        ex.send(Kind.RESULT, {"id": second.header["id"], "status": "ok"}, b"v")
        assert c.recv({Kind.RESULT}).header == {"id": 2, "status": "ok"}  # named already


def test_death_is_charged_to_the_job_the_executor_ran_not_the_one_it_finished(master):
    c, sup, ex, first, second = two_tasks(master)
    # The supervisor's DIED overtakes the result the executor sent just before.
    sup.send(Kind.DIED, {"executor": ex.sock.identity.hex(), "exitcode": 0, "signal": 9})
    ex.send(Kind.RESULT, {"id": first.header["id"], "status": "ok"}, b"v")
    results = {r.header["id"]: r.header["status"] for r in (c.recv({Kind.RESULT}), c.recv({Kind.RESULT}))}
    assert results == {1: "ok", 2: "lost"}


def test_death_is_charged_to_the_job_the_supervisor_saw_running(master):
    """Results of short jobs go back in batches: the first job held may be done."""
    c, sup, ex, first, second = two_tasks(master)
    sup.send(Kind.DIED, {"executor": ex.sock.identity.hex(), "exitcode": 0, "signal": 11,
                         "job": second.header["id"]})
    res = c.recv({Kind.RESULT}).header
    assert (res["id"], res["status"]) == (2, "lost") and "signal 11" in res["error"]
    held = next(iter(master.clients.values())).jobs
    assert held[1].deaths == 0 and 2 not in held  # job 1 requeued, not charged; 2 lost
    ex2 = executor(master)
    run(ex2)
    res = c.recv({Kind.RESULT}).header
    assert (res["id"], res["status"]) == (1, "ok")


def raw_tasks(peer):
    """Each TASK message as it came: its job ids."""
    for _ in range(100):
        peer.master.step(timeout=0.01)
        while peer.sock.poll(0):
            msg = Message.from_frames(peer.sock.recv_multipart())
            if msg.kind is Kind.TASK:
                return msg.header["ids"]
    raise AssertionError("no TASK arrived")


def finished(master, state, count):
    for _ in range(100):
        master.step(timeout=0.01)
        if state.done == count:
            return
    raise AssertionError(f"the executor did not finish {count} jobs")


def test_short_jobs_travel_in_batches_long_ones_one_by_one(master):
    c = client(master)
    c.send(Kind.SUBMIT, {"ids": list(range(1, 1001))}, b"ctx", *[b"call"] * 1000)
    ex = Peer(master, b"e")
    ex.send(Kind.READY, {"capacity": 2, "batch": 64, "supervisor": "", **PEER})
    first = raw_tasks(ex)
    assert len(first) == 1  # nothing known of its client's jobs yet: none waits behind another
    ex.send(Kind.RESULT, {"results": [[first[0], "ok", None, 0, 0.00002]], "busy": 0.00002})  # 20 us
    batch = raw_tasks(ex)
    assert len(batch) == 64  # short jobs: up to its batch at once
    state = master.executors[ex.sock.identity]
    ex.send(Kind.RESULT, {"results": [[batch[0], "ok", None, 0, 0.5]], "busy": 0.5})  # a long one
    finished(master, state, 2)
    assert master.sched.window(state) == 2  # back to its capacity at once
    ex.send(Kind.RESULT, {"results": [[tid, "ok", None, 0, 0.5] for tid in batch[1:]], "busy": 31.5})
    assert len(raw_tasks(ex)) == 1  # its client's jobs are long now: one at a time


def test_batches_leave_work_for_every_executor(master):
    """An executor's batch of 0.1 ms jobs is at most its share of the queue."""
    c = client(master)
    executors = [Peer(master, b"e") for _ in range(4)]
    for ex in executors:
        ex.send(Kind.READY, {"capacity": 2, "batch": 64, "supervisor": "", **PEER})
    c.send(Kind.SUBMIT, {"ids": list(range(1, 41))}, b"ctx", *[b"call"] * 40)
    firsts = [raw_tasks(ex) for ex in executors]
    assert all(len(ids) == 1 for ids in firsts)
    executors[0].send(Kind.RESULT, {"results": [[firsts[0][0], "ok", None, 0, 1e-4]], "busy": 1e-4})
    assert len(raw_tasks(executors[0])) == 2 + 36 // 4  # 36 queued, 4 executors


def call_frame(function: bytes) -> bytes:
    """A call frame as a client makes it: the function's pickle, its length first, then the arguments'."""
    return len(function).to_bytes(4, "little") + function + b"args"


@pytest.mark.parametrize("seconds, then, expected", [(1e-6, b"noop", 64), (1e-5, b"noop", 20),
                                                     (1e-3, b"noop", 2), (1e-6, b"simulate", 2)])
def test_jobs_shorter_than_a_message_go_many_to_a_task_though_executors_idle(master, seconds, then, expected):
    """Idle executors do not split tiny jobs into a message each: a fresh
    executor's TASK carries jobs until their cost adds up to
    MESSAGE_SECONDS (at most its batch); 1 ms jobs still go two at a time,
    and so do jobs of a function other than the one whose cost is known."""
    c = client(master)
    first = Peer(master, b"e")
    first.send(Kind.READY, {"capacity": 2, "batch": 64, "supervisor": "", **PEER})
    c.send(Kind.SUBMIT, {"ids": [1]}, b"ctx", call_frame(b"noop"))
    (tid,) = raw_tasks(first)
    first.send(Kind.RESULT, {"results": [[tid, "ok", None, 0, seconds]], "busy": seconds})
    finished(master, master.executors[first.sock.identity], 1)  # the client's cost is known now
    idle = [Peer(master, b"e") for _ in range(100)]
    for ex in idle:
        ex.send(Kind.READY, {"capacity": 2, "batch": 64, "supervisor": "", **PEER})
    for _ in range(100):
        master.step(timeout=0.01)
        if len(master.executors) == 101:
            break
    c.send(Kind.SUBMIT, {"ids": list(range(2, 202))}, b"ctx", *[call_frame(then)] * 200)
    sizes: list = []  # of each TASK to the idle executors (which of them get one is the master's choice)
    for _ in range(100):
        master.step(timeout=0.01)
        for ex in idle:
            while ex.sock.poll(0):
                msg = Message.from_frames(ex.sock.recv_multipart())
                sizes += [len(msg.header["ids"])] if msg.kind is Kind.TASK else []
        if sum(sizes) + len(master.executors[first.sock.identity].running) == 200:
            break
    assert max(sizes) == expected


def test_another_clients_job_never_waits_behind_a_long_one_sent_ahead(master):
    """Client a's jobs take 0.4 s: none is prefetched, and b's job, which comes
    while a's run, is the next to go (b has no job out: it goes first)."""
    a, b = client(master), client(master)
    for jid in range(1, 11):
        submit(a, jid)
    ex = Peer(master, b"e")
    ex.send(Kind.READY, {"capacity": 2, "batch": 64, "supervisor": "", **PEER})
    for done in range(1, 3):
        (tid,) = raw_tasks(ex)  # one at a time: the first unknown, then known long
        state = master.executors[ex.sock.identity]
        ex.send(Kind.RESULT, {"results": [[tid, "ok", None, 0, 0.4]], "busy": 0.4})
        finished(master, state, done)
    (tid,) = raw_tasks(ex)
    submit(b, 100)
    assert ex.nothing({Kind.TASK})  # b's job does not wait behind a's running one, either
    ex.send(Kind.RESULT, {"results": [[tid, "ok", None, 0, 0.4]], "busy": 0.4})
    task = ex.recv({Kind.TASK})
    assert bytes(task.payload[1]) == b"call100" and ex.nothing({Kind.TASK})


def test_a_spare_runs_a_quick_clients_jobs_while_long_ones_hold_every_executor(master):
    """Client a's 0.4 s jobs hold the one executor. Client b's jobs are known
    to be quick: the worker's express spare runs each at once, one at a
    time. a's jobs, long, never go to the spare."""
    a, b = client(master), client(master)
    ex = Peer(master, b"e")
    ex.send(Kind.READY, {"capacity": 2, "batch": 64, "supervisor": "", **PEER})
    spare = Peer(master, b"e")
    spare.send(Kind.READY, {"capacity": 1, "batch": 1, "express": True, "supervisor": "", **PEER})
    submit(b, 99)
    (tid,) = raw_tasks(ex)  # an executor with nothing to do comes before the spare
    ex.send(Kind.RESULT, {"results": [[tid, "ok", None, 0, 0.001]], "busy": 0.001})
    assert b.recv({Kind.RESULT}).header["id"] == 99
    for jid in range(1, 11):
        submit(a, jid)
    (tid,) = raw_tasks(ex)
    assert spare.nothing({Kind.TASK})  # a's first job is of unknown length: not the spare's
    ex.send(Kind.RESULT, {"results": [[tid, "ok", None, 0, 0.4]], "busy": 0.4})
    (tid,) = raw_tasks(ex)
    for jid in (100, 101, 102):
        submit(b, jid)
        task = spare.recv({Kind.TASK})
        assert bytes(task.payload[1]) == f"call{jid}".encode()
        spare.send(Kind.RESULT, {"results": [[task.header["id"], "ok", None, 0, 0.001]], "busy": 0.001})
        assert b.recv({Kind.RESULT}).header["id"] == jid
    submit(b, 103)
    submit(b, 104)
    first = spare.recv({Kind.TASK})
    assert spare.nothing({Kind.TASK})  # one at a time: 104 waits for the spare to finish
    spare.send(Kind.RESULT, {"results": [[first.header["id"], "ok", None, 0, 0.001]], "busy": 0.001})
    assert bytes(spare.recv({Kind.TASK}).payload[1]) == b"call104"
    assert ex.nothing({Kind.TASK})  # and the executor's a job runs on, alone
    snap = master.monitor.snapshot(master.books, 0.0)
    assert len(snap["executors"]) == 1 and len(snap["express"]) == 1 and snap["totals"]["express"] == 1


class CountingPoller:
    """The master's poller, with a record of each poll's timeout (ms)."""

    def __init__(self, poller: zmq.Poller) -> None:
        self.poller = poller
        self.timeouts: list = []

    def poll(self, timeout=None):
        self.timeouts.append(timeout)
        return self.poller.poll(timeout)


def _turn(master: Master, counting: CountingPoller) -> tuple[bool, bool]:
    """One turn with nothing arriving: (whether it spun, whether it slept after)."""
    counting.timeouts.clear()
    master.step(timeout=0.01)
    looks, last = counting.timeouts[:-1], counting.timeouts[-1]
    assert set(looks) <= {0}
    return len(looks) > 1, last == 10


def until(master: Master, count: str) -> None:
    """Step the master until it has counted a message: a submit, a result."""
    for _ in range(100):
        if master.counts[count]:
            return
        master.step(timeout=0.05)  # sleeps until the message comes
    raise AssertionError(f"the master counted no {count} message")


@pytest.mark.parametrize("spin", [0.002, 0.0])
def test_the_master_spins_only_after_jobs_moved(spin):
    """A submit or a result makes the master poll without sleeping for up
    to ``spin`` seconds before it sleeps; heartbeats alone, or ``spin=0``,
    let it sleep at once."""
    with running_master(spin=spin) as m:
        c, ex = client(m), executor(m)
        m.poller = counting = CountingPoller(m.poller)
        assert ex.nothing({Kind.TASK})  # registration is over; it slept since
        assert _turn(m, counting) == (False, True)
        c.send(Kind.HEARTBEAT)
        m.step(timeout=0.01)  # a heartbeat moves no job
        assert _turn(m, counting) == (False, True)
        submit(c, 1)
        until(m, "submitted")
        assert _turn(m, counting) == (spin > 0, True)  # after the submit
        assert _turn(m, counting) == (False, True)  # it slept: quiet again
        task = ex.recv({Kind.TASK})
        assert _turn(m, counting) == (False, True)
        ex.send(Kind.RESULT, {"id": task.header["id"], "status": "ok"}, b"v")
        until(m, "done")
        assert _turn(m, counting) == (spin > 0, True)  # after the result
        assert c.recv({Kind.RESULT}).header["id"] == 1


def test_the_master_does_not_spin_while_jobs_wait_in_the_queue(master):
    """Queued jobs mean busy executors: the master leaves them the CPU."""
    c, ex = client(master), executor(master)  # capacity 1: the second job waits
    master.poller = counting = CountingPoller(master.poller)
    submit(c, 1)
    submit(c, 2)
    ex.recv({Kind.TASK})
    assert master.sched.queued == 1
    assert _turn(master, counting) == (False, True)


def test_a_job_expected_to_outlast_a_workers_time_limit_waits_for_one_with_time(master):
    """A worker 60 s from its time limit gets short jobs, not one expected to
    take 120 s: that one runs on a worker that has the time, once it comes."""
    c = client(master)
    limited = Peer(master, b"s")
    limited.send(Kind.READY, {"capacity": 0, "procs": 1, "left": 60.0, **PEER})
    ex = Peer(master, b"e")
    ex.send(Kind.READY, {"capacity": 2, "supervisor": limited.sock.identity.hex(), **PEER})
    c.send(Kind.SUBMIT, {"ids": [1], "expected": 120.0}, b"ctx", b"call1")
    assert ex.nothing({Kind.TASK})  # parked: nothing it could finish
    c.send(Kind.SUBMIT, {"ids": [2], "expected": 30.0}, b"ctx", b"call2")
    assert bytes(ex.recv({Kind.TASK}).payload[1]) == b"call2"  # new work: it looks again
    snap = master.monitor.snapshot(master.books, master.clock())
    assert 55 <= snap["workers"][0]["left"] <= 60
    fresh = Peer(master, b"s")
    fresh.send(Kind.READY, {"capacity": 0, "procs": 1, **PEER})  # no time limit
    ex2 = Peer(master, b"e")
    ex2.send(Kind.READY, {"capacity": 2, "supervisor": fresh.sock.identity.hex(), **PEER})
    assert bytes(ex2.recv({Kind.TASK}).payload[1]) == b"call1"
    assert ex.nothing({Kind.TASK})


def test_a_parked_executor_looks_again_once_the_jobs_it_could_not_finish_are_cancelled(master):
    c = client(master)
    limited = Peer(master, b"s")
    limited.send(Kind.READY, {"capacity": 0, "procs": 1, "left": 60.0, **PEER})
    ex = Peer(master, b"e")
    ex.send(Kind.READY, {"capacity": 1, "supervisor": limited.sock.identity.hex(), **PEER})
    long_ids = list(range(1, 66))  # more than the scheduler looks past
    c.send(Kind.SUBMIT, {"ids": long_ids, "expected": 3600.0}, b"ctx", *[b"long"] * 65)
    c.send(Kind.SUBMIT, {"ids": [100]}, b"ctx", b"call100")
    assert ex.nothing({Kind.TASK}) and master.sched.parked == {ex.sock.identity}
    for jid in long_ids:
        c.send(Kind.CANCEL, {"id": jid})
    assert bytes(ex.recv({Kind.TASK}).payload[1]) == b"call100"


def test_clients_hear_once_that_the_clusters_scaler_stopped(tmp_path):
    (tmp_path / "adapt.json").write_text("{}")
    (tmp_path / "adapt-state.json").write_text(
        '{"stopped": true, "failures": 3, "error": "sbatch refused the job: no such partition"}')
    with running_master(cluster_dir=tmp_path) as m:
        c = client(m)
        m.notice.next_look = 0.0  # its next look (every 10 s) is now
        said = c.recv({Kind.ERROR}).header
        assert said["code"] == "notice" and "3 failed worker submissions" in said["error"]
        assert "no such partition" in said["error"]
        m.notice.next_look = 0.0  # the next look: nothing new to say to this client
        assert c.nothing({Kind.ERROR})
        late = client(m)
        m.notice.next_look = 0.0
        assert late.recv({Kind.ERROR}).header["code"] == "notice"  # one that came later hears it too


def test_a_departing_worker_hands_back_its_job_without_an_internal_error(master, caplog):
    c = client(master)
    sup = Peer(master, b"s")
    sup.send(Kind.READY, {"capacity": 0, "procs": 1, **PEER})
    ex = Peer(master, b"e")
    ex.send(Kind.READY, {"capacity": 1, "supervisor": sup.sock.identity.hex(), **PEER})
    submit(c, 1, retries=0)
    ex.recv({Kind.TASK})
    sup.send(Kind.DRAIN)
    sup.send(Kind.DEPART)
    assert sup.nothing({Kind.ERROR}) and master.supervisors == {} and master.executors == {}
    assert "internal error" not in caplog.text and "departed" in caplog.text
    assert next(iter(master.clients.values())).queue[0].jid == 1  # back in line, no retry counted


def test_a_master_handing_over_dispatches_nothing_more_and_stops_once_its_running_job_ends(master):
    c = client(master)
    ex = executor(master)
    submit(c, 1)
    submit(c, 2)
    task = ex.recv({Kind.TASK})
    master.handover.schedule(time.monotonic(), 0, 60)  # as cw.succession does, near the limit
    assert ex.nothing({Kind.TASK}) and not master.stopping  # job 1 still runs: the master waits
    ex.send(Kind.RESULT, {"id": task.header["id"], "status": "ok"}, b"v")
    assert c.recv({Kind.RESULT}).header["id"] == 1
    assert ex.nothing({Kind.TASK}) and master.stopping  # job 2 stays with its client, for the successor


def test_a_master_handing_over_leaves_at_its_deadline_though_a_job_runs(master):
    c = client(master)
    ex = executor(master)
    submit(c, 1)
    ex.recv({Kind.TASK})
    master.handover.schedule(time.monotonic(), 0, 0)
    master.step(timeout=0.01)
    assert master.stopping  # the job runs again under the successor


def gpu_worker(master, gpus="0,1", executors=2):
    """A supervisor that has ``gpus``, and its executors."""
    sup = Peer(master, b"s")
    ready = {"capacity": 0, "procs": executors, "cpus": 8, "mem": 0, "gpus": gpus, **PEER}
    sup.send(Kind.READY, ready)
    execs = []
    for _ in range(executors):
        ex = Peer(master, b"e")
        ex.send(Kind.READY, {"capacity": 1, "supervisor": sup.sock.identity.hex(), **PEER})
        execs.append(ex)
    return sup, ready, execs


def submit_needing(peer, jid, needs):
    peer.send(Kind.SUBMIT, {"ids": [jid], "retries": 2, "resources": needs}, b"ctx", b"call")


def tasks_gpus(*executors):
    """The GPU ids of the TASKs that reached these executors (after stepping the master)."""
    for _ in range(20):
        executors[0].master.step(timeout=0.01)
    got = []
    for ex in executors:
        while ex.sock.poll(50):
            msg = Message.from_frames(ex.sock.recv_multipart())
            if msg.kind is Kind.TASK:
                got.append(msg.header.get("gpus"))
    return got


def test_a_gpu_held_by_a_running_job_stays_held_when_its_worker_says_ready_again(master):
    c = client(master)
    sup, ready, (e1, e2) = gpu_worker(master)
    submit_needing(c, 1, [1, 1, 0])
    assert tasks_gpus(e1, e2) == ["0"]
    sup.send(Kind.READY, ready)  # as after a silence of the master: what runs is still held
    submit_needing(c, 2, [1, 1, 0])
    assert tasks_gpus(e1, e2) == ["1"]
    submit_needing(c, 3, [1, 1, 0])  # both GPUs held: it waits
    assert tasks_gpus(e1, e2) == []


def test_a_job_asking_for_more_gpus_than_any_worker_has_is_refused_at_once(master):
    c = client(master)
    gpu_worker(master, "0,1", 1)
    for _ in range(5):
        master.step(timeout=0.01)
    submit_needing(c, 1, [1, 3, 0])
    reply = c.recv({Kind.RESULT})
    assert reply.header["status"] == "error" and "asks for 1 CPU, 3 GPUs" in reply.header["error"]
