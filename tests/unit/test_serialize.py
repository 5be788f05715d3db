"""Pickling of calls, results and remote errors."""
import pickle
import threading

import pytest

from cw.errors import RemoteException, UnpicklableError
from cw.serialize import RemoteTraceback, dumps_call, dumps_error, error_text, loads_call, loads_error


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
    from cw.serialize import dumps_value

    assert pickle.loads(dumps_value({"a": [1, 2]})) == {"a": [1, 2]}

    class Local:  # not importable by name: must travel by value
        def __init__(self):
            self.x = 3

    assert pickle.loads(dumps_value(Local())).x == 3
