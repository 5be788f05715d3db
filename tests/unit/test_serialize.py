"""Pickling of calls, results and remote errors."""
import pickle
import threading

import pytest

from cw.errors import RemoteException, UnpicklableError
from cw.joberrors import RemoteTraceback, dumps_error, error_text, loads_error
from cw.serialize import dumps_call, loads_call


def test_closure_and_lambda_round_trip():
    k = 3
    func, args, kwargs = loads_call(dumps_call(lambda x, y=0: x * k + y, (2,), {"y": 1}))
    assert func(*args, **kwargs) == 7


@pytest.mark.parametrize(
    "args, kwargs, named",
    [((threading.Lock(),), {}, "argument 0"), ((1,), {"lock": threading.Lock()}, "keyword argument 'lock'")],
)
def test_unpicklable_argument_is_named(args, kwargs, named):
    with pytest.raises(UnpicklableError, match=named) as info:
        dumps_call(print, args, kwargs, jobid="j1")
    assert "lock" in str(info.value) and "'j1'" in str(info.value)
    assert isinstance(info.value, pickle.PicklingError)


def test_unpicklable_function_is_named():
    lock = threading.Lock()
    with pytest.raises(UnpicklableError, match="function"):
        dumps_call(lambda: lock, (), {})


def test_error_comes_back_with_its_type_and_remote_traceback():
    try:
        {}["missing"]
    except KeyError as e:
        frame, summary = dumps_error(e)
    exc = loads_error(frame)
    assert isinstance(exc, KeyError) and summary == "KeyError: 'missing'"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "test_error_comes_back" in error_text(exc)


def test_error_that_cannot_unpickle_becomes_remote_exception():
    class Local(Exception):
        def __reduce__(self):
            return (_missing_on_client, ())

    try:
        raise Local("x")
    except Local as e:
        frame, _ = dumps_error(e)
    exc = loads_error(frame, jobid=4)
    assert isinstance(exc, RemoteException) and exc.jobid == 4
    assert "Local" in str(exc) and "Traceback" in str(exc)


def _missing_on_client():
    raise RuntimeError("cannot rebuild")


def test_garbage_error_frame_is_a_remote_exception():
    assert isinstance(loads_error(b"garbage"), RemoteException)


def test_remote_exception_pickles_with_its_jobid():
    exc = pickle.loads(pickle.dumps(RemoteException("text", ("a", 1))))
    assert exc.text == "text" and exc.jobid == ("a", 1)


def test_results_pickle_plainly_when_they_can_and_by_value_when_they_must():
    from cw.serialize import dumps_value, loads_value

    plain = dumps_value({"a": [1, 2]})
    assert len(plain) == 1 and pickle.loads(plain[0]) == {"a": [1, 2]}

    class Local:  # not importable by name: must travel by value
        def __init__(self):
            self.x = 3

    assert loads_value(dumps_value(Local())).x == 3


def test_big_buffers_travel_out_of_band_and_arrive_writable():
    import numpy

    from cw.serialize import OUT_OF_BAND, dumps_value, loads_value

    small, big = numpy.arange(10), numpy.arange(OUT_OF_BAND)  # 8 bytes an item: over the limit
    frames = dumps_value({"small": small, "big": big, "again": big[::-1].copy()})
    assert len(frames) == 3  # the pickle, then each big array's own buffer
    assert [len(f) for f in frames[1:]] == [big.nbytes, big.nbytes]
    assert big.nbytes > len(frames[0]) * 100  # not inside the pickle as well
    back = loads_value(frames)
    assert (back["big"] == big).all() and (back["small"] == small).all() and back["again"][0] == big[-1]
    back["big"][0] = -1  # a job may change its arrays in place
    func, args, _ = loads_call(dumps_call(numpy.sum, (big,), {}))
    assert func(*args) == big.sum() and args[0].flags.writeable


def test_a_function_is_pickled_once_until_what_it_names_changes():
    namespace = {"offset": 1}
    exec("def shifted(x):\n    return x + offset\n", namespace)
    shifted = namespace["shifted"]
    first = dumps_call(shifted, (1,), {})
    again = dumps_call(shifted, (2,), {})
    length = int.from_bytes(first[0][:4], "little")
    assert first[0][:4 + length] == again[0][:4 + length]
    func, args, _ = loads_call(again)
    assert func(*args) == 3
    namespace["offset"] = 10  # a global it names, rebound: pickled afresh
    func, args, _ = loads_call(dumps_call(shifted, (2,), {}))
    assert func(*args) == 12


def test_a_function_given_new_code_is_pickled_afresh():
    namespace = {"offset": 1, "scale": 5}
    exec("def f(x):\n    return x + offset\ndef g(x):\n    return x * scale\n", namespace)
    f = namespace["f"]
    assert _call(dumps_call(f, (2,), {})) == 3
    f.__code__ = namespace["g"].__code__  # it names other globals now
    assert _call(dumps_call(f, (2,), {})) == 10
    namespace["scale"] = 7  # one of those, rebound: pickled afresh again
    assert _call(dumps_call(f, (2,), {})) == 14


def test_a_global_rebound_to_an_object_at_a_freed_address_is_seen():
    """The cache holds the objects it checks, not their ids: a new object
    often takes the address of one just freed."""
    namespace = {"data": [1, 2]}
    exec("def f():\n    return data\n", namespace)
    assert _call(dumps_call(namespace["f"], (), {})) == [1, 2]
    for _ in range(20):
        value = list(range(len(namespace["data"]) + 1))
        namespace["data"] = None
        namespace["data"] = value[:]  # frequently where the last list was
        assert _call(dumps_call(namespace["f"], (), {})) == value


def _call(frames: list):
    func, args, kwargs = loads_call(frames)
    return func(*args, **kwargs)


def test_a_closure_with_new_contents_is_pickled_afresh():
    def make(k):
        return lambda x: x * k

    for k in (2, 3):
        func, args, _ = loads_call(dumps_call(make(k), (5,), {}))
        assert func(*args) == 5 * k


def test_a_jobs_exception_is_its_own_type_and_a_remote_exception():
    try:
        raise FileNotFoundError(2, "no such file", "data.csv")
    except OSError as e:
        frame, _ = dumps_error(e)
    exc = loads_error(frame, 4)
    assert isinstance(exc, FileNotFoundError) and isinstance(exc, RemoteException)
    assert type(exc).__name__ == "FileNotFoundError" and exc.filename == "data.csv" and exc.errno == 2
    assert exc.jobid == 4 and "Traceback" in exc.error and "data.csv" in str(exc)
    assert type(pickle.loads(pickle.dumps(exc))) is FileNotFoundError  # travels as the job's own


class Final(Exception):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("no subclasses")


def test_a_type_that_allows_no_subclass_gives_a_remote_exception_naming_it():
    try:
        raise Final("x")
    except Final as e:
        frame, _ = dumps_error(e)
    exc = loads_error(frame)
    assert type(exc) is RemoteException and exc.type_name.endswith("Final") and "Final: x" in exc.error


def test_an_exception_the_client_cannot_unpickle_is_a_remote_exception_naming_its_type():
    frame = pickle.dumps((b"not a pickle", "Traceback (most recent call last):\n  ...\nlab.Odd: odd\n"))
    exc = loads_error(frame, 3)
    assert type(exc) is RemoteException and exc.type_name == "lab.Odd"
    assert exc.error.endswith("lab.Odd: odd\n")


def _closure_over(table):
    def look(p):
        return float(table[p])

    return look


def test_a_packed_closure_keeps_its_array_in_the_blob_not_a_copy():
    """``pack`` puts a closure's big array after its pickle; ``unpack`` gives
    it back as a writable view of the packed bytes (no copy); a read-only
    blob is copied once; small objects stay plain pickles."""
    numpy = pytest.importorskip("numpy")
    from cw.pickling import PACKED, pack, unpack

    table = numpy.arange(1 << 20, dtype=numpy.float64)
    blob = bytearray(pack(_closure_over(table)))
    assert blob[:4] == PACKED
    look = unpack(blob)
    inside = look.__closure__[0].cell_contents
    assert look(12345) == 12345.0 and inside.flags.writeable
    assert numpy.shares_memory(inside, numpy.frombuffer(blob, dtype=numpy.uint8))
    assert not numpy.shares_memory(unpack(bytes(blob)).__closure__[0].cell_contents,
                                   numpy.frombuffer(blob, dtype=numpy.uint8))
    assert pack({"a": 1})[:1] == b"\x80" and unpack(pack({"a": 1})) == {"a": 1}


def test_a_packed_blob_mapped_copy_on_write_is_changed_only_in_the_mapping(tmp_path):
    """An executor maps the host's copy copy-on-write: a job that writes to
    the array changes its own pages, never the file the others map."""
    numpy = pytest.importorskip("numpy")
    import mmap

    from cw.pickling import pack, unpack

    path = tmp_path / "blob"
    path.write_bytes(pack(_closure_over(numpy.zeros(1 << 17))))
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    look = unpack(mapped)
    look.__closure__[0].cell_contents[:] = 7.0
    assert look(5) == 7.0
    assert unpack(path.read_bytes())(5) == 0.0


@pytest.mark.parametrize("cut", [3, 20, 100, -1])
def test_a_damaged_packed_blob_is_a_clear_error(cut):
    numpy = pytest.importorskip("numpy")
    from cw.pickling import pack, unpack

    blob = pack(_closure_over(numpy.zeros(1 << 17)))
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        unpack(blob[:cut])


def test_a_shared_handle_inside_a_big_closure_unpacks_from_a_mapped_blob(tmp_path):
    """A ``share()`` handle captured in a function travels inside the
    function's packed blob; unpacked from the host's mapped copy it
    resolves to its object (once, not the whole function again)."""
    import mmap

    from cw.pickling import pack, unpack
    from cw.share import Shared

    handle = Shared(b"x" * 200_000)

    def job(p):
        return len(handle), p  # on the executor, the handle is its object

    path = tmp_path / "blob"
    path.write_bytes(pack(job))
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    assert unpack(mapped)(3) == (200_000, 3)
