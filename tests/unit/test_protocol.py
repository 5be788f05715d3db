"""Frame encoding and decoding, and every way a message can be malformed."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cw.errors import ProtocolError
from cw.protocol import (
    MAGIC,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    Kind,
    Message,
    job_runs,
    legacy_layout,
    peer_version,
    validate,
)


def frames(kind: bytes, header, *payload, magic=MAGIC):
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return [magic + kind + head, *payload]


def test_round_trip_keeps_kind_header_and_payload():
    msg = Message(Kind.SUBMIT, {"ids": [5], "retries": 1}, (b"ctx", b"call"))
    back = Message.from_frames(msg.to_frames())
    assert back == msg
    assert msg.to_frames()[0][:4] == MAGIC + b"S"
    assert msg.to_frames()[1:] == [b"ctx", b"call"]  # payload frames stay apart


def test_jobs_with_buffers_count_their_frames():
    msg = Message(Kind.SUBMIT, {"ids": [1, 2], "frames": [1, 3]}, (b"ctx", b"a", b"b", b"b1", b"b2"))
    assert Message.from_frames(msg.to_frames()) == msg
    task = Message(Kind.TASK, {"ids": [7, 8], "frames": [1, 3]}, (b"c", b"a", b"b", b"1", b"2"))
    assert Message.from_frames(task.to_frames()) == task
    body = Message.from_frames(task.to_frames()).body
    assert list(job_runs(body, task.payload)) == [(b"c", [(7, (b"a",)), (8, (b"b", b"1", b"2"))])]


def test_jobs_of_several_contexts_come_in_runs():
    """A TASK of two clients' jobs sends each run's context once."""
    payload = (b"c1", b"a", b"b", b"c2", b"x", b"x1", b"c1", b"d")
    task = Message(Kind.TASK, {"ids": [1, 2, 3, 4], "frames": [1, 1, 2, 1], "contexts": [2, 1, 1]}, payload)
    assert Message.from_frames(task.to_frames()) == task
    assert list(job_runs(Message.from_frames(task.to_frames()).body, task.payload)) == [
        (b"c1", [(1, (b"a",)), (2, (b"b",))]), (b"c2", [(3, (b"x", b"x1"))]), (b"c1", [(4, (b"d",))])]
    for runs in ([2, 1], [2, 1, 1, 0], [4, 0], []):
        with pytest.raises(ProtocolError, match="contexts"):
            validate(Kind.TASK, {"ids": [1, 2, 3, 4], "frames": [1, 1, 2, 1], "contexts": runs}, 8)
    with pytest.raises(ProtocolError, match="carries 7 payload frames, expected 8"):
        validate(Kind.TASK, task.header, 7)


def test_header_is_compact_json():
    assert Message(Kind.CANCEL, {"id": 1}).to_frames() == [MAGIC + b'C{"id":1}']
    header = {"s": "\u00e9\u2028\"\\", "f": [1.5e-05, 0.0, 2**62], "n": None, "b": True, "o": {"x": [[]]}}
    first = Message(Kind.STATUS, header).to_frames()[0]
    assert first[4:] == json.dumps(header, separators=(",", ":")).encode()
    assert Message.from_frames([first]).header == header


@pytest.mark.parametrize("raw", [b' {"id": 1}', b'{"id": 1}\n', b'\t{ "id" : 1 } '])
def test_a_header_is_read_as_json_reads_it(raw):
    """Whitespace around a header is tolerated, as by json.loads."""
    assert Message.from_frames([MAGIC + b"C" + raw]).header == {"id": 1}


@pytest.mark.parametrize("raw", [b'{"id":1}x', b'{"id":1}{}', b' ', b''])
def test_text_beyond_a_header_is_a_protocol_error(raw):
    with pytest.raises(ProtocolError, match="not JSON"):
        Message.from_frames([MAGIC + b"C" + raw])


def test_the_version_of_a_peer_is_read_in_either_layout():
    """Protocols 1 to 3 sent magic, kind and header as three frames: such a
    peer is answered in its own layout, to be told to upgrade."""
    old = [b"CW\x03", b"H", b"{}"]
    assert peer_version(old) == 3 and legacy_layout(old)
    new = Message(Kind.HELLO, {}).to_frames()
    assert peer_version(new) == PROTOCOL_VERSION and not legacy_layout(new)
    assert peer_version([b"junk"]) is None and not legacy_layout([b"abc"])
    legacy = Message(Kind.ERROR, {"error": "x"}).to_legacy_frames()
    assert legacy == [MAGIC, b"E", b'{"error":"x"}']
    with pytest.raises(ProtocolError, match=f"protocol version 3 spoken by peer, {PROTOCOL_VERSION} here"):
        Message.from_frames(old)


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "empty message"),
        ([b"CW"], "not a cw message"),
        ([MAGIC + b"S"], "not JSON"),
        (frames(b"S", {"id": 1}, b"a", b"b", magic=b"XX\x01"), "not a cw message"),
        (frames(b"S", {"id": 1}, b"a", b"b", magic=b"CW\x09"), "protocol version 9"),
        (frames(b"Q", {}), "unknown message kind"),
        (frames(b"S", b"{not json", b"a", b"b"), "not JSON"),
        (frames(b"S", b"\xff\xfe", b"a", b"b"), "not JSON"),
        (frames(b"S", [1, 2], b"a", b"b"), "not a JSON object"),
        (frames(b"C", {}), "lacks 'id'"),
        (frames(b"C", {"id": "7"}), "must be int"),
        (frames(b"C", {"id": True}), "must be int"),
        (frames(b"C", {"id": -1}), "out of range"),
        (frames(b"C", {"id": 2**70}), "out of range"),
        (frames(b"C", {"id": 1}, b"unexpected"), "payload frames"),
        (frames(b"S", {"ids": [1]}, b"only one"), "payload frames"),
        (frames(b"S", {"ids": [1, "x"]}, b"a", b"b", b"c"), "list of job ids"),
        (frames(b"R", {"results": [[1, "weird", None, 0]]}), "malformed RESULT entry"),
        (frames(b"R", {"results": [[1, "ok", None, 2]]}, b"one"), "announces 2 payload frames"),
        (frames(b"S", {"ids": [1, 2], "frames": [1]}, b"c", b"a", b"b"), "2 counts"),
        (frames(b"S", {"ids": [1], "frames": [2]}, b"c", b"a"), "expected 3"),
        (frames(b"T", {"ids": [1]}, b"ctx"), "expected 2"),
        (frames(b"T", {"ids": [1], "frames": [0]}, b"ctx"), "counts of 1"),
        (frames(b"T", {"ids": [1], "contexts": [2]}, b"ctx", b"call"), "contexts must give"),
        (frames(b"H", {"session": "x" * 20000, "host": "h", "pid": 1, "v": 1,
                       "python": "3", "cloudpickle": "3"}), "longer than"),
        (frames(b"A", {"ids": [1, "two"]}), "list of job ids"),
        (frames(b"W", {"session": "s", "heartbeat": "fast", "v": 1, "python": "3",
                       "cloudpickle": "3"}), "must be float"),
        (frames(b"S", b" " * (MAX_HEADER_BYTES + 1), b"a", b"b"), "exceeds"),
    ],
)
def test_malformed_frames_raise_protocol_error(raw, message):
    with pytest.raises(ProtocolError, match=message):
        Message.from_frames(raw)


def test_optional_fields_are_checked_when_present():
    with pytest.raises(ProtocolError, match="retries"):
        validate(Kind.SUBMIT, {"ids": [1], "retries": "many"}, 2)
    validate(Kind.SUBMIT, {"ids": [1]}, 2)


def test_submit_batch_frames_must_match_its_ids():
    validate(Kind.SUBMIT, {"ids": [1, 2, 3]}, 4)
    with pytest.raises(ProtocolError, match="3 jobs carries 3 payload frames"):
        validate(Kind.SUBMIT, {"ids": [1, 2, 3]}, 3)
    with pytest.raises(ProtocolError, match="carries 0 jobs"):
        validate(Kind.SUBMIT, {"ids": []}, 1)


def test_results_batch_is_checked_entry_by_entry():
    validate(Kind.RESULTS, {"results": [[1, "ok", None, 1], [2, "error", "boom", 0]]}, 1)
    named = [[1, "ok", None, 1, 0.5, "node7:42"], [2, "ok", None, 0, None, "n:1"]]  # quick jobs
    validate(Kind.RESULTS, {"results": named}, 1)
    for bad in ([[1, "ok", None]], [[1, "fine", None, 1]], [["1", "ok", None, 1]], "x",
                [[1, "ok", None, 1, 0.5, 7]], [[1, "ok", None, 1, None, "n:1", "more"]]):
        with pytest.raises(ProtocolError):
            validate(Kind.RESULTS, {"results": bad}, 1)
    with pytest.raises(ProtocolError):  # an executor does not name itself per result
        validate(Kind.RESULT, {"results": [[1, "ok", None, 1, 0.5, "node7:42"]]}, 1)
    with pytest.raises(ProtocolError, match="announces 1 payload frames, carries 2"):
        validate(Kind.RESULTS, {"results": [[1, "ok", None, 1]]}, 2)


def test_unknown_extra_fields_are_tolerated():
    # Newer peers may add fields; the master ignores what it does not know.
    Message.from_frames(frames(b"C", {"id": 1, "future": [1, 2]}))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_never_raise_anything_but_protocol_error(raw):
    try:
        Message.from_frames(raw)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([k.value for k in Kind]),
    st.dictionaries(st.sampled_from(["id", "ids", "status", "host", "pid", "v", "capacity",
                                     "session", "error", "executor", "exitcode", "heartbeat"]),
                    st.one_of(st.integers(), st.text(max_size=8), st.none(), st.booleans(),
                              st.floats(allow_nan=True), st.lists(st.integers(), max_size=3))),
    st.lists(st.binary(max_size=8), max_size=3),
)
def test_mutated_headers_never_raise_anything_but_protocol_error(kind, header, payload):
    try:
        Message.from_frames([MAGIC + kind + json.dumps(header).encode(), *payload])
    except ProtocolError:
        pass


def test_deeply_nested_header_is_a_protocol_error_not_a_crash():
    with pytest.raises(ProtocolError, match="not JSON"):
        Message.from_frames([MAGIC + b"?" + b"[" * 50_000])


def test_a_status_reply_of_a_big_cluster_may_outgrow_other_headers():
    """2,000 executors describe themselves in well over 64 KiB."""
    snapshot = {"executors": [{"host": "node%04d" % i, "pid": i, "job": None} for i in range(2000)]}
    raw = Message(Kind.STATUS, snapshot).to_frames()
    assert len(raw[0]) > MAX_HEADER_BYTES
    assert Message.from_frames(raw).header == snapshot
    with pytest.raises(ProtocolError, match="exceeds"):
        Message.from_frames([MAGIC + b"C" + b" " * (MAX_HEADER_BYTES + 1)])


def test_every_kind_has_a_record_and_its_schema_comes_from_it():
    from cw.protocol import RECORDS, SCHEMAS

    assert set(RECORDS) == set(Kind) and set(SCHEMAS) == set(Kind)
    assert SCHEMAS[Kind.DIED] == {"executor": (str, True), "exitcode": (int, True),
                                  "signal": (int, False), "job": (int, False)}
    assert "stats" not in SCHEMAS[Kind.HEARTBEAT]  # Any: the monitor checks it


def test_a_received_message_carries_its_typed_record():
    from cw.protocol import Cancel, Died, Heartbeat, Result, ResultBatch

    died = Message.from_frames(Message(Kind.DIED, {"executor": "ab", "exitcode": 1}).to_frames())
    assert died.body == Died("ab", 1, 0, None) and died.body.signal == 0  # defaults fill what was left out
    cancel = Message.from_frames(Message(Kind.CANCEL, {"id": 3, "later": "x"}).to_frames())
    assert cancel.body == Cancel(3, False, None)  # a field of a later version is ignored
    beat = Message.from_frames(Message(Kind.HEARTBEAT, {"stats": {"x": [1]}}).to_frames())
    assert beat.body == Heartbeat(None, 0, {"x": [1]})
    result = Message.from_frames(Message(Kind.RESULT, {"results": [[4, "ok", None, 1, 0.5]], "busy": 0.5},
                                         (b"v",)).to_frames())
    assert result.body == ResultBatch([Result(4, "ok", None, 1, 0.5, None)], 0.5)
    status = Message.from_frames(Message(Kind.STATUS, {"anything": [1]}).to_frames())
    assert status.body == {"anything": [1]}  # a STATUS reply is a free-form snapshot
    assert Message(Kind.BYE).body is None  # only a received message has one
    with pytest.raises(ProtocolError, match="lacks 'exitcode'"):
        Message.from_frames(Message(Kind.DIED, {"executor": "ab"}).to_frames())
