"""Blobs (cw.blobs): a big function pickle travels by reference, is fetched in
chunks, checked, cached in bytes, and a job whose blob cannot be had fails."""

import pytest

from cw import blobs, serialize
from cw.protocol import Kind, Message
from cw.serialize import FunctionCache, dumps_call, loads_call
from cw.worker.fetch import Fetcher


def make_closure(table):
    def f(i):
        return len(table) + i

    return f


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(blobs, "_threshold", 1000)
    monkeypatch.setattr(serialize, "functions", FunctionCache(1 << 30, idle=60))
    monkeypatch.setattr(serialize, "fetched", FunctionCache(1 << 30, idle=60))
    monkeypatch.setattr(blobs, "store", blobs.Store())


def test_a_big_function_travels_by_reference_and_is_held_once(small_threshold):
    f = make_closure(b"x" * 50_000)
    calls = [dumps_call(f, (i,), {}) for i in range(3)]
    key = blobs.reference(calls[0][0])
    assert key is not None and all(blobs.reference(c[0]) == key for c in calls)
    assert all(len(c[0]) < 200 for c in calls)  # a reference, not 50 KB each
    assert len(blobs.store) == 1 and blobs.store.blobs[key][1] == 3  # one copy, three jobs
    for c in calls[:2]:
        blobs.store.let_go((b"ctx", *c))
    assert blobs.store.get(key) is not None
    blobs.store.let_go((b"ctx", *calls[2]))
    assert blobs.store.get(key) is None  # the last job is over: the bytes go


def test_a_small_function_still_travels_inline(small_threshold):
    call = dumps_call(len, ("abc",), {})
    assert blobs.reference(call[0]) is None and len(blobs.store) == 0
    func, args, _ = loads_call(call)
    assert func(*args) == 3


def fetch_all(fetcher, store_answer, tid, call):
    """Drive a Fetcher against a client's store, as the master would route."""
    now = 0.0
    while not fetcher.ready(tid, (b"{}", *call), now):  # the job's (context, call, *buffers) frames
        asked = fetcher.send.sent.pop()
        assert asked.kind is Kind.FETCH and asked.header["id"] == tid
        fetch = Message.from_frames(Message(Kind.FETCH, {**asked.header, "executor": "ee"}).to_frames()).body
        answer = Message.from_frames(store_answer(fetch).to_frames())
        error = fetcher.arrived(answer, now)
        if error:
            return error
    return None


class Sent:
    def __init__(self):
        self.sent = []

    def __call__(self, msg):
        self.sent.append(msg)


def test_an_executor_fetches_a_blob_in_chunks_and_runs_the_job(small_threshold, monkeypatch):
    monkeypatch.setattr(blobs, "CHUNK", 10_000)
    f = make_closure(bytes(range(256)) * 200)
    call = dumps_call(f, (5,), {})
    fetcher = Fetcher(Sent())
    assert fetch_all(fetcher, blobs.answer, 7, call) is None
    assert fetcher.fetched == 1 and fetcher.fetched_bytes > 50_000
    func, args, _ = loads_call(call)
    assert func(*args) == 51_205
    assert fetcher.ready(8, (b"{}", *call), 0.0)  # cached now: no second fetch
    assert fetcher.send.sent == []


def test_a_blob_its_client_no_longer_holds_fails_the_job(small_threshold):
    call = dumps_call(make_closure(b"y" * 5000), (1,), {})
    blobs.store.let_go((b"ctx", *call))
    error = fetch_all(Fetcher(Sent()), blobs.answer, 1, call)
    assert "no longer held by its client" in error
    with pytest.raises(serialize.BlobMissing):
        loads_call(call)


def test_a_damaged_blob_is_refused(small_threshold):
    call = dumps_call(make_closure(b"z" * 5000), (1,), {})

    def tampered(fetch):
        msg = blobs.answer(fetch)
        data = bytearray(msg.payload[0])
        data[-1] ^= 1
        return Message(Kind.BLOB, msg.header, (bytes(data),))

    assert "digest differs" in fetch_all(Fetcher(Sent()), tampered, 1, call)


def test_no_answer_fails_the_job_after_the_fetch_timeout(small_threshold):
    call = dumps_call(make_closure(b"w" * 5000), (1,), {})
    fetcher = Fetcher(Sent())
    assert not fetcher.ready(1, (b"{}", *call), 0.0)
    assert fetcher.overdue(blobs.FETCH_SECONDS - 1) is None
    assert "did not arrive" in fetcher.overdue(blobs.FETCH_SECONDS + 1)


def test_the_function_cache_is_bounded_in_bytes_and_forgets_the_idle():
    cache = FunctionCache(max_bytes=100, idle=60)
    cache.put("a", "fa", 60, now=0)
    cache.put("b", "fb", 30, now=1)
    assert cache.get("a", now=2) == "fa"  # used: now the newest
    cache.put("c", "fc", 30, now=3)  # 120 bytes: the least recently used goes
    assert cache.get("b", now=4) is None and cache.size == 90
    cache.put("huge", "fh", 500, now=5)  # bigger than the bound: kept alone
    assert list(cache.entries) == ["huge"] and cache.size == 500
    cache.tidy(now=64)
    assert cache.get("huge", now=64) == "fh"  # used at 5 and 64: not idle
    cache.tidy(now=125)
    assert not cache.entries and cache.size == 0


def test_a_blob_message_is_checked():
    from cw.errors import ProtocolError

    ok = Message(Kind.BLOB, {"blob": "ab", "offset": 0, "total": 3}, (b"abc",))
    assert Message.from_frames(ok.to_frames()).body.total == 3
    for header, payload in (({"blob": "ab", "total": 3}, ()), ({"blob": "ab"}, (b"x",)),
                            ({"blob": "ab", "missing": True}, (b"x",))):
        with pytest.raises(ProtocolError):
            Message.from_frames(Message(Kind.BLOB, header, payload).to_frames())


def test_a_big_argument_goes_as_a_blob_held_once(small_threshold):
    """A client that shares no memory with its executors (another host)."""
    import numpy

    table = numpy.arange(10_000, dtype=numpy.float64)  # 80 KB: out of band, over the threshold
    calls = [dumps_call(numpy.sum, (table,), {}) for _ in range(3)]
    refs = [blobs.needs(c) for c in calls]
    assert refs[0] == refs[1] == refs[2] and len(refs[0]) == 1 and refs[0][0][1] is False
    key = refs[0][0][0]
    assert blobs.store.blobs[key][1] == 3 and len(blobs.store.get(key)) == table.nbytes
    table[0] = 42.0  # changed: a new digest, the old content still held for its jobs
    changed = dumps_call(numpy.sum, (table,), {})
    assert blobs.needs(changed)[0][0] != key and len(blobs.store) == 2
    fetcher = Fetcher(Sent())
    assert fetch_all(fetcher, blobs.answer, 3, calls[0]) is None
    func, args, _ = loads_call(calls[0])
    assert func(*args) == numpy.arange(10_000).sum() and args[0].flags.writeable
    args[0][1] = -1.0  # the job's copy is its own (copy-on-write)
    assert loads_call(calls[1])[1][0][1] == 1.0
    for c in calls + [changed]:
        blobs.store.let_go((b"ctx", *c))
    assert len(blobs.store) == 0 and key in blobs.store.recent  # kept a while, in case


def test_a_shared_object_is_pickled_once_and_resolved_once_per_executor(small_threshold, monkeypatch):
    import numpy

    from cw.client import ClusterExecutor

    monkeypatch.setattr(serialize, "objects", FunctionCache(1 << 30, idle=60))
    table = ClusterExecutor.share(numpy.arange(100_000))  # out of band: over 64 KiB
    assert repr(table).startswith("<Shared ") and table.nbytes > 800_000
    calls = [dumps_call(numpy.sum, (table,), {}) for _ in range(3)]
    assert all(blobs.needs(c) == [(table.key, False)] for c in calls)  # no hash per job
    assert blobs.store.blobs[table.key][1] == 3
    assert fetch_all(Fetcher(Sent()), blobs.answer, 1, calls[0]) is None
    first = loads_call(calls[0])[1][0]
    second = loads_call(calls[1])[1][0]
    assert first is second and int(first.sum()) == 4_999_950_000  # one object for the executor's jobs
    assert table.key not in serialize.fetched.entries  # the object is kept, not its bytes too
    del table
    gc_collect()
    assert not blobs._shared  # the handle is gone: so is its registration
    assert blobs.store.get(blobs.needs(calls[2])[0][0]) is not None  # a job still holds it


def gc_collect():
    import gc

    gc.collect()


def test_a_big_blob_is_named_by_a_hash_tree_of_its_pieces():
    import hashlib

    small = b"s" * 1000
    assert blobs.digest(small) == hashlib.sha256(small).digest()  # below TREE_BYTES: plain SHA-256
    big = bytearray(blobs.TREE_BYTES + 12345)
    key = blobs.digest(big)
    assert key == blobs.digest(bytes(big)) == blobs.digest(memoryview(big))
    assert key != hashlib.sha256(big).digest()
    big[-1] = 1  # one byte of the last, short piece
    assert blobs.digest(big) != key
    assert blobs.digest(big[:-1]) not in (key, blobs.digest(big))  # the size is part of the name


def test_a_copy_is_a_snapshot_and_a_landing_is_a_file():
    import os

    data = bytearray(b"x" * (blobs.TREE_BYTES + 1))
    snap = blobs.copy(data)
    data[0] = 0
    assert snap[0] == ord("x") and len(snap) == len(data) and blobs.copy(b"small") == b"small"
    memory, fd = blobs.landing(1 << 20)
    try:
        assert fd is not None and os.fstat(fd).st_size == 1 << 20
        memory[:5] = b"hello"
        assert os.pread(fd, 5, 0) == b"hello"  # what lands is in the file: kept with no copy
    finally:
        memory.close()
        os.close(fd)
    assert blobs.landing(0)[1] is None
