"""Shared-memory files for big buffers: naming, mapping, clean-up."""
import os
import subprocess

import numpy
import pytest

from cw import shm
from cw.serialize import dumps_call, dumps_value, loads_call, loads_value


def ours():
    return {n for n in os.listdir(shm.ROOT) if n.startswith(f"cw-{shm._cached[1]}-{os.getpid()}-")}


@pytest.fixture(autouse=True)
def no_leftovers():
    assert shm.host_key() is not None, "this machine has /dev/shm"
    before = ours()
    yield
    assert ours() == before, "a test left shared-memory files behind"


def test_big_arguments_travel_as_a_reference_and_map_writable():
    array = numpy.arange(shm.SHARE_FROM, dtype=numpy.int64)  # 8 MiB
    frames = dumps_call(numpy.sum, (array,), {}, shared=True)
    assert len(frames) == 2 and isinstance(frames[1], shm.Ref) and len(frames[1]) < 100
    assert os.stat(frames[1].path).st_mode & 0o777 == 0o600
    func, (got,), _ = loads_call(frames)
    assert func(got) == array.sum() and got.flags.writeable
    got[0] = -5  # copy-on-write: a retry of the job would see the data as sent
    _, (again,), _ = loads_call(frames)
    assert again[0] == 0
    shm.release(frames)
    assert not os.path.exists(frames[1].path)


def test_small_buffers_and_unshared_calls_stay_inline():
    small = numpy.zeros(shm.SHARE_FROM // 16, dtype=numpy.uint8)  # out of band, not shared
    big = numpy.zeros(shm.SHARE_FROM, dtype=numpy.uint8)
    assert not any(isinstance(f, shm.Ref) for f in dumps_call(len, (small,), {}, shared=True))
    assert not any(isinstance(f, shm.Ref) for f in dumps_call(len, (big,), {}))


def test_a_result_is_consumed_by_its_reader():
    value = {"a": numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8)}
    frames = dumps_value(value, owner=os.getpid())
    path = frames[1].path
    back = loads_value([bytes(f) for f in frames])  # as received: plain frames
    assert not os.path.exists(path) and back["a"].sum() == shm.SHARE_FROM
    back["a"][0] = 9  # writable


def test_a_result_nobody_reads_is_discarded():
    frames = dumps_value(numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8), owner=os.getpid())
    shm.discard([bytes(f) for f in frames])  # as received, then dropped (a cancelled job's)
    assert not os.path.exists(frames[1].path)


def test_unwritable_shared_memory_falls_back_to_inline(monkeypatch, tmp_path):
    monkeypatch.setattr(shm, "ROOT", str(tmp_path / "absent"))
    frames = dumps_call(len, (numpy.zeros(shm.SHARE_FROM, dtype=numpy.uint8),), {}, shared=True)
    assert len(frames) == 2 and not isinstance(frames[1], shm.Ref)
    assert len(frames[1]) == shm.SHARE_FROM


def test_references_are_checked_before_use(tmp_path):
    for bad in (b"cw-shm:../../etc/passwd", b"cw-shm:cw-1-2-" + b"0" * 32,
                b"cw-shm:cw-1-2-" + b"z" * 32):
        with pytest.raises(shm.DataUnreachable):
            shm.attach(bad)
    assert shm.bounced("cw.shm.DataUnreachable: cannot open x", [shm.Ref(b"x")])
    assert not shm.bounced("cw.shm.DataUnreachable: raised by a job", [b"inline"])
    assert not shm.bounced("ValueError: x", [shm.Ref(b"x")])


def test_sweep_removes_files_of_dead_processes_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidns = shm._cached[1]
    names = {"dead": f"cw-{pidns}-{dead.pid}-{'a' * 32}", "alive": f"cw-{pidns}-{os.getpid()}-{'b' * 32}",
             "other namespace": f"cw-{pidns + 1}-{dead.pid}-{'c' * 32}"}
    for name in names.values():
        open(os.path.join(shm.ROOT, name), "w").close()
    try:
        assert shm.sweep(pidns) >= 1
        left = set(os.listdir(shm.ROOT))
        assert names["dead"] not in left
        assert names["alive"] in left and names["other namespace"] in left
    finally:
        for name in names.values():
            shm._unlink(os.path.join(shm.ROOT, name))


def test_cw_shm_0_turns_it_off():
    code = "from cw import shm; print(shm.host_key())"
    env = {**os.environ, "CW_SHM": "0"}
    out = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr
