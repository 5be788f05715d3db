"""``ClusterExecutor`` against the semantics of CPython's own tests for
``concurrent.futures`` (Lib/test/test_concurrent_futures.py: the wait,
as_completed and executor tests that apply to an executor of processes).
Each test is named after the CPython test it follows. Real master and
three single-executor workers: the jobs run in parallel as in a pool."""
import sys
import threading
import time
import weakref
from concurrent import futures
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING

import cloudpickle
import pytest

from cw.client import ClusterExecutor, RemoteException

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors cannot import tests/


def made(state, result=None, exception=None):
    f = futures.Future()
    f._state, f._result, f._exception = state, result, exception
    return f


def mul(x, y):
    return x * y


def sleep_and_raise(t):
    time.sleep(t)
    raise Exception("this is an exception")


class Dummy:
    def method(self):
        pass


def make_dummy(_):
    return Dummy()


@pytest.fixture
def ex(cluster):
    port = cluster(3)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as executor:
        # primed, as CPython's tests prime theirs: every executor has run a job
        assert [f.result(30) for f in [executor.submit(time.sleep, 0.1) for _ in range(3)]] == [None] * 3
        yield executor


# -- wait -------------------------------------------------------------------

def test_first_completed(ex):
    cancelled = made(CANCELLED)
    f1, f2 = ex.submit(mul, 21, 2), ex.submit(time.sleep, 1.5)
    done, not_done = futures.wait([cancelled, f1, f2], return_when=futures.FIRST_COMPLETED)
    assert done == {f1} and not_done == {cancelled, f2}


def test_first_completed_some_already_completed(ex):
    notified, ok = made(CANCELLED_AND_NOTIFIED), made(FINISHED, result=42)
    f1 = ex.submit(time.sleep, 1.5)
    done, pending = futures.wait([notified, ok, f1], return_when=futures.FIRST_COMPLETED)
    assert done == {notified, ok} and pending == {f1}


def test_first_exception(ex):
    f1, f2, f3 = ex.submit(mul, 2, 21), ex.submit(sleep_and_raise, 1.5), ex.submit(time.sleep, 3)
    done, pending = futures.wait([f1, f2, f3], return_when=futures.FIRST_EXCEPTION)
    assert done == {f1, f2} and pending == {f3}


def test_first_exception_some_already_complete(ex):
    ok, cancelled, notified = made(FINISHED, result=42), made(CANCELLED), made(CANCELLED_AND_NOTIFIED)
    f1, f2 = ex.submit(divmod, 21, 0), ex.submit(time.sleep, 1.5)
    done, pending = futures.wait([ok, cancelled, notified, f1, f2], return_when=futures.FIRST_EXCEPTION)
    assert done == {ok, notified, f1} and pending == {cancelled, f2}


def test_first_exception_one_already_failed(ex):
    failed = made(FINISHED, exception=OSError())
    f1 = ex.submit(time.sleep, 2)
    done, pending = futures.wait([failed, f1], return_when=futures.FIRST_EXCEPTION)
    assert done == {failed} and pending == {f1}


def test_all_completed(ex):
    ok, notified, failed = made(FINISHED, result=42), made(CANCELLED_AND_NOTIFIED), \
        made(FINISHED, exception=OSError())
    f1, f2 = ex.submit(divmod, 2, 0), ex.submit(mul, 2, 21)
    done, pending = futures.wait([ok, notified, failed, f1, f2], return_when=futures.ALL_COMPLETED)
    assert done == {ok, notified, failed, f1, f2} and pending == set()


def test_timeout(ex):
    """A quick job's result is not held behind a long one (issue 23, item 3)."""
    ok, notified, failed = made(FINISHED, result=42), made(CANCELLED_AND_NOTIFIED), \
        made(FINISHED, exception=OSError())
    f1, f2 = ex.submit(mul, 6, 7), ex.submit(time.sleep, 6)
    done, pending = futures.wait([notified, failed, ok, f1, f2], timeout=5,
                                 return_when=futures.ALL_COMPLETED)
    assert done == {notified, failed, ok, f1} and pending == {f2}


def test_pending_calls_race(ex):
    fs = {ex.submit(mul, i, 2) for i in range(100)}
    done, pending = futures.wait(fs, timeout=60, return_when=futures.ALL_COMPLETED)
    assert len(done) == 100 and not pending


# -- as_completed -----------------------------------------------------------

def test_no_timeout(ex):
    fixed = [made(CANCELLED_AND_NOTIFIED), made(FINISHED, exception=OSError()), made(FINISHED, result=42)]
    f1, f2 = ex.submit(mul, 2, 21), ex.submit(mul, 7, 6)
    assert set(futures.as_completed([*fixed, f1, f2], timeout=60)) == {*fixed, f1, f2}


def test_zero_timeout(ex):
    fixed = [made(CANCELLED_AND_NOTIFIED), made(FINISHED, exception=OSError()), made(FINISHED, result=42)]
    f1 = ex.submit(time.sleep, 2)
    seen = set()
    with pytest.raises(futures.TimeoutError):
        for f in futures.as_completed([*fixed, f1], timeout=0):
            seen.add(f)
    assert seen == set(fixed)


def test_duplicate_futures(ex):
    f1 = ex.submit(time.sleep, 0.5)
    assert len(list(futures.as_completed([f1, f1, f1], timeout=60))) == 1


def test_correct_timeout_exception_msg():
    fs = [made(CANCELLED_AND_NOTIFIED), made(PENDING), made(RUNNING), made(FINISHED, result=42)]
    with pytest.raises(futures.TimeoutError, match=r"2 \(of 4\) futures unfinished"):
        list(futures.as_completed(fs, timeout=0))


# -- the executor -------------------------------------------------------------

def test_submit(ex):
    assert ex.submit(pow, 2, 8).result(30) == 256


def test_submit_keyword(ex):
    assert ex.submit(mul, 2, y=8).result(30) == 16


def test_map(ex):
    assert list(ex.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(10), range(10), chunksize=3)) == list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(40), range(40), chunksize=50)) == list(map(pow, range(40), range(40)))
    with pytest.raises(ValueError):
        list(ex.map(pow, range(40), range(40), chunksize=-1))


def test_map_exception(ex):
    results = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(results) == (0, 1) and next(results) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(ex):
    got = []
    with pytest.raises(futures.TimeoutError):
        for value in ex.map(time.sleep, [0, 0, 6], timeout=5):
            got.append(value)
    assert got == [None, None]


def test_shutdown_race_issue12456(ex):
    ex.map(str, [2] * 4)
    ex.shutdown()


def test_no_stale_references(ex):
    obj = Dummy()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    ex.submit(obj.method)  # the future dropped at once
    del obj
    assert collected.wait(10), "the executor kept a reference to the submitted call"
    assert ref() is None


def test_free_reference(ex):
    import gc

    for obj in ex.map(make_dummy, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_run_after_shutdown(ex):
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)


def test_hang_issue12364(ex):
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown()
    assert [f.result(0) for f in fs] == [None] * 50  # shutdown(wait=True) waited for all


def test_traceback(ex):
    future = ex.submit(sleep_and_raise, 0)
    with pytest.raises(Exception, match="this is an exception") as info:
        future.result(30)
    # Not ``type(...) is Exception`` as CPython asserts: cw's is a subclass of the
    # job's type and of RemoteException, so that both catch it (the original's).
    assert type(info.value).__name__ == "Exception" and info.value.args == ("this is an exception",)
    assert isinstance(info.value, RemoteException) and "this is an exception" in info.value.error
    # The remote traceback names the job's frame; its source line shows where
    # the executor can read the file (not here: this module travels by value).
    cause = str(info.value.__cause__)
    assert "in sleep_and_raise" in cause and "Exception: this is an exception" in cause
