"""Sealed frames (cw.seal): what the direct path's bulk channel carries.
Each message opens once, in order, only under its own session's key, only
whole and only in the direction it was sealed for."""
import pytest
import zmq

from cw import seal

pytestmark = pytest.mark.skipif(not seal.available(), reason="cryptography is not installed")


def pair():
    terms = seal.new_terms()
    return seal.Seal(terms, seal.EXECUTOR), seal.Seal(terms, seal.CLIENT)


def opened(frames):
    """Header and payload of an opened message, the payload opened whole."""
    header, *payload = frames
    return header, [bytes(p) for p in payload]


def test_a_sealed_message_opens_to_what_was_sealed():
    executor, client = pair()
    chunk = bytes(range(256)) * 4096
    frames = executor.seal([b"header", memoryview(chunk)])
    assert chunk not in b"".join(frames)  # nothing in the clear
    assert opened(client.open(frames)) == (b"header", [chunk])
    assert opened(client.open(executor.seal([b"next"]))) == (b"next", [])
    back = client.seal([b"ack", b""])
    assert opened(executor.open([zmq.Frame(f) for f in back])) == (b"ack", [b""])


def test_a_payload_opens_straight_into_a_buffer():
    executor, client = pair()
    chunk = b"x" * 1000
    header, sealed = client.open(executor.seal([b"h", chunk]))
    buffer = bytearray(3000)
    assert len(sealed) == 1000 and seal.put(buffer, 1000, sealed)
    assert buffer == b"\0" * 1000 + chunk + b"\0" * 1000
    assert seal.put(buffer, 0, b"plain") and buffer[:5] == b"plain"  # an unsealed frame: copied


def test_a_replayed_or_older_message_is_refused():
    executor, client = pair()
    first = executor.seal([b"one", b"1"])
    second = executor.seal([b"two", b"2"])
    assert client.open(second) is not None
    assert client.open(first) is None  # older than one already opened
    assert client.open(second) is None  # the same again


def test_a_forged_or_altered_message_is_refused():
    executor, client = pair()
    frames = executor.seal([b"header", b"payload" * 100])
    bad_header = [frames[0], bytes([frames[1][0] ^ 1]) + frames[1][1:], frames[2]]
    assert client.open(bad_header) is None
    header, sealed = client.open(frames)
    altered = executor.seal([b"header", b"payload"])
    altered[2] = altered[2][:-1] + bytes([altered[2][-1] ^ 1])
    _, bad = client.open(altered)
    assert not bad.into(bytearray(len(bad)))  # the payload's own tag fails


def test_a_cut_message_does_not_open():
    executor, client = pair()
    frames = executor.seal([b"header", b"payload"])
    assert client.open(frames[:2]) is None  # the frame count is sealed in


def test_another_session_or_the_other_direction_does_not_open():
    executor, client = pair()
    stranger, _ = pair()
    assert client.open(stranger.seal([b"h"])) is None  # another key
    assert executor.open(executor.seal([b"h"])) is None  # its own message, sent back to it
    assert client.open([b"short", b"x"]) is None and client.open([]) is None


def test_terms_are_fresh_and_make_a_routing_id():
    terms = {seal.new_terms() for _ in range(100)}
    assert len(terms) == 100 and all(len(t) == seal.TERMS_BYTES and t[0] != 0 for t in terms)
    with pytest.raises(ValueError):
        seal.Seal(b"short", seal.CLIENT)
