"""Shared-memory files for big buffers: naming, mapping, spares, clean-up."""
import gc
import os
import subprocess

import numpy
import pytest

from cw import shm
from cw.serialize import dumps_call, dumps_value, loads_call, loads_value


def ours():
    return {n for n in os.listdir(shm.root()) if n.startswith(f"cw-{shm._cached[1]}-{os.getpid()}-")}


def spares():
    return [path for path, _, _ in shm._spares.files]


@pytest.fixture(autouse=True)
def no_leftovers():
    assert shm.host_key() is not None, "this machine has /dev/shm"
    shm.drop_spares()
    before = ours()
    yield
    gc.collect()
    shm.drop_spares()
    assert ours() == before, "a test left shared-memory files behind"


def test_big_arguments_travel_as_a_reference_and_map_writable():
    array = numpy.arange(shm.SHARE_FROM, dtype=numpy.int64)  # 8 MiB
    frames = dumps_call(numpy.sum, (array,), {}, shared=True)
    ref = frames[1]
    assert len(frames) == 2 and isinstance(ref, shm.Ref) and len(ref) < 100
    assert os.stat(ref.path).st_mode & 0o777 == 0o600
    func, (got,), _ = loads_call(frames)
    assert func(got) == array.sum() and got.flags.writeable
    # Claimed: a second reader (a requeued run elsewhere) gets the bytes another way.
    assert not os.path.exists(ref.path) and not shm.unclaimed(frames)
    with pytest.raises(shm.DataUnreachable):
        loads_call(frames)
    assert numpy.array_equal(numpy.frombuffer(shm.inline(ref), dtype=numpy.int64), array)
    assert numpy.array_equal(loads_call([frames[0], shm.reissue(ref, os.getpid())])[1][0], array)
    got[0] = -5  # copy-on-write: the file keeps the data as sent
    del got
    gc.collect()
    assert len(spares()) == 2  # both mappings are gone: their files are spares
    for path in spares():
        assert numpy.fromfile(path, dtype=numpy.int64)[0] == 0
    shm.release(frames)


def test_a_spare_is_overwritten_for_the_next_big_buffer_and_expires(monkeypatch):
    frames = dumps_value(numpy.ones(2 * shm.SHARE_FROM, dtype=numpy.uint8), owner=os.getpid())
    back = loads_value([bytes(f) for f in frames])
    assert spares() == []  # mapped: not a spare yet
    del back
    (spare,) = spares()
    inode = os.stat(spare).st_ino
    again = dumps_value(numpy.full(shm.SHARE_FROM, 7, dtype=numpy.uint8), owner=os.getpid())
    assert spares() == [] and not os.path.exists(spare)
    assert os.stat(again[1].path).st_ino == inode  # the same pages, cut to size
    assert os.path.getsize(again[1].path) == shm.SHARE_FROM
    back = loads_value([bytes(f) for f in again])
    assert back.sum() == 7 * shm.SHARE_FROM
    del back
    assert len(spares()) == 1
    shm.tidy()
    assert len(spares()) == 1  # fresh
    monkeypatch.setattr(shm, "SPARE_SECONDS", 0.0)
    shm.tidy()
    assert spares() == [] and not os.path.exists(spare)


def test_spares_are_few(monkeypatch):
    monkeypatch.setattr(shm, "SPARE_FILES", 2)
    values = [loads_value([bytes(f) for f in dumps_value(numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8),
                                                         owner=os.getpid())]) for _ in range(3)]
    assert spares() == []  # all mapped
    del values
    gc.collect()
    assert len(spares()) == 2 and all(os.path.exists(p) for p in spares())
    assert len([n for n in ours() if "-s-" in n]) == 2  # the third went at once


def test_small_buffers_and_unshared_calls_stay_inline():
    small = numpy.zeros(shm.SHARE_FROM // 16, dtype=numpy.uint8)  # out of band, not shared
    big = numpy.zeros(shm.SHARE_FROM, dtype=numpy.uint8)
    assert not any(isinstance(f, shm.Ref) for f in dumps_call(len, (small,), {}, shared=True))
    assert not any(isinstance(f, shm.Ref) for f in dumps_call(len, (big,), {}))


def test_a_forked_child_leaves_its_parents_files_alone():
    def value():
        return loads_value([bytes(f) for f in dumps_value(numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8),
                                                          owner=os.getpid())])
    spare, mapped = value(), value()
    del spare
    (path,) = spares()
    child = os.fork()
    if child == 0:  # what the child's exit would do: its mappings go, then its spares
        try:
            del mapped
            gc.collect()
            shm.drop_spares()
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    assert spares() == [path] and os.path.exists(path)
    del mapped
    assert spares() == [path]  # mapped before a fork: a child might map it still, so it went


def test_a_file_a_forked_child_still_maps_is_never_overwritten():
    value = loads_value([bytes(f) for f in dumps_value(numpy.full(shm.SHARE_FROM, 1, dtype=numpy.uint8),
                                                       owner=os.getpid())])
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # keeps the mapping while the parent sends more big buffers
        code = 1
        try:
            os.close(go_w)  # a parent gone means end of file here, not a hang
            os.write(ready_w, b"x")
            os.read(go_r, 1)
            code = 0 if int(value.sum()) == shm.SHARE_FROM else 2
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(ready_w)
    try:
        os.read(ready_r, 1)
        del value
        gc.collect()
        again = dumps_value(numpy.full(shm.SHARE_FROM, 7, dtype=numpy.uint8), owner=os.getpid())
        shm.discard([bytes(f) for f in again])
    finally:
        os.close(go_w)  # the child reads on
        status = os.waitpid(child, 0)[1]
        os.close(ready_r)
    assert status == 0  # the child saw its ones, not the sevens


def test_files_still_mapped_at_exit_are_removed(tmp_path):
    code = """if True:
        import os, tempfile, numpy
        keep = tempfile.TemporaryDirectory()  # a weakref.finalize before cw's: atexit order flips
        from cw import shm
        from cw.serialize import dumps_value, loads_value
        shm.host_key()
        value = loads_value([bytes(f) for f in dumps_value(numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8),
                                                           owner=os.getpid())])
        gone = loads_value([bytes(f) for f in dumps_value(numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8),
                                                          owner=os.getpid())])
        del gone  # a spare
        print(os.getpid())
        """
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    assert [n for n in os.listdir(shm.root()) if n.startswith(f"cw-{shm._cached[1]}-{pid}-")] == []


def test_a_result_is_claimed_by_its_reader():
    value = {"a": numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8)}
    frames = dumps_value(value, owner=os.getpid())
    path = frames[1].path
    back = loads_value([bytes(f) for f in frames])  # as received: plain frames
    assert not os.path.exists(path) and back["a"].sum() == shm.SHARE_FROM
    back["a"][0] = 9  # writable
    shm.discard([bytes(f) for f in frames])  # a late duplicate of the result: harmless
    assert back["a"].sum() == shm.SHARE_FROM + 8


def test_a_result_nobody_reads_is_discarded():
    frames = dumps_value(numpy.ones(shm.SHARE_FROM, dtype=numpy.uint8), owner=os.getpid())
    shm.discard([bytes(f) for f in frames])  # as received, then dropped (a cancelled job's)
    assert not os.path.exists(frames[1].path)


def test_unwritable_shared_memory_falls_back_to_inline(monkeypatch, tmp_path):
    monkeypatch.setattr(shm, "_cached", (*shm._cached[:2], str(tmp_path / "absent")))
    frames = dumps_call(len, (numpy.zeros(shm.SHARE_FROM, dtype=numpy.uint8),), {}, shared=True)
    assert len(frames) == 2 and not isinstance(frames[1], shm.Ref)
    assert len(frames[1]) == shm.SHARE_FROM


def test_references_are_checked_before_use(tmp_path):
    for bad in (b"cw-shm:../../etc/passwd", b"cw-shm:cw-1-2-" + b"0" * 32,
                b"cw-shm:cw-1-2-" + b"z" * 32):
        with pytest.raises(shm.DataUnreachable):
            shm.attach(bad)
    # An UNREACHABLE result is sent again inline only if it went with shared memory.
    assert shm.bounced([b"call", shm.Ref(b"x")])
    assert not shm.bounced([b"call", b"inline"])


def test_sweep_removes_files_of_dead_processes_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidns = shm._cached[1]
    names = {"dead": f"cw-{pidns}-{dead.pid}-{'a' * 32}", "alive": f"cw-{pidns}-{os.getpid()}-{'b' * 32}",
             "other namespace": f"cw-{pidns + 1}-{dead.pid}-{'c' * 32}",
             "dead's spare": f"cw-{pidns}-{dead.pid}-s-{'d' * 32}"}
    for name in names.values():
        open(os.path.join(shm.root(), name), "w").close()
    try:
        assert shm.sweep(pidns) >= 2
        left = set(os.listdir(shm.root()))
        assert names["dead"] not in left and names["dead's spare"] not in left
        assert names["alive"] in left and names["other namespace"] in left
    finally:
        for name in names.values():
            shm._unlink(os.path.join(shm.root(), name))


PLANTED = 100_000


@pytest.fixture
def look_alikes():
    """PLANTED empty files of another user (nobody) in /dev/shm itself, named
    as cw named its files there (this pid namespace, a dead pid), spares too."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make files another user's")
    dead = subprocess.Popen(["true"])
    dead.wait()
    names = [f"cw-{shm._cached[1]}-{dead.pid}-{'s-' if i % 10 == 0 else ''}{i:032x}" for i in range(PLANTED)]
    made = []
    try:
        for name in names:
            path = os.path.join(shm.ROOT, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            made.append(path)
            os.fchown(fd, 65534, 65534)
            os.close(fd)
        yield made
    finally:
        for path in made:
            shm._unlink(path)


def test_files_planted_in_dev_shm_cost_a_start_nothing(look_alikes, monkeypatch):
    calls = {"scandir": [], "unlink": 0, "stat": 0, "pid_alive": 0}

    def counted(name, real):
        def call(*args, **kwargs):
            if name == "scandir":
                calls[name].append(str(args[0]))
            else:
                calls[name] += 1
            return real(*args, **kwargs)
        return call

    for name in ("scandir", "unlink", "stat", "lstat"):
        monkeypatch.setattr(os, name, counted("stat" if name == "lstat" else name, getattr(os, name)))
    monkeypatch.setattr(shm, "pid_alive", counted("pid_alive", shm.pid_alive))
    ours = [n for n in os.listdir(shm.root()) if shm._ANY.fullmatch(n)]  # live processes' files
    assert shm.sweep(shm._cached[1]) == 0  # nothing removed, nothing claimed
    # Only our private directory was read: the planted files cost no call at all.
    assert calls["scandir"] == [shm.root()]
    assert calls["unlink"] == 0 and calls["stat"] == 0 and calls["pid_alive"] <= len(ours)
    monkeypatch.undo()
    assert all(os.path.exists(p) for p in look_alikes[:: PLANTED // 100])
    assert len([n for n in os.listdir(shm.ROOT) if n.startswith(f"cw-{shm._cached[1]}-")]) >= PLANTED


def test_the_sweep_counts_only_what_it_removed(monkeypatch, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    paths = [os.path.join(shm.root(), f"cw-{shm._cached[1]}-{dead.pid}-{c * 32}") for c in "ef"]
    for path in paths:
        open(path, "w").close()
    real = os.unlink

    def refuse_first(path, *args, **kwargs):
        if path == paths[0]:
            raise PermissionError(1, "Operation not permitted", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse_first)
    try:
        with caplog.at_level("INFO", logger="cw.shm"):
            assert shm.sweep(shm._cached[1]) == 1
        assert "removed 1 shared-memory file(s)" in caplog.text
        assert os.path.exists(paths[0]) and not os.path.exists(paths[1])
    finally:
        monkeypatch.undo()
        for path in paths:
            shm._unlink(path)


def test_cw_shm_0_turns_it_off():
    code = "from cw import shm; print(shm.host_key())"
    env = {**os.environ, "CW_SHM": "0"}
    out = subprocess.run([os.sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "None", out.stderr


STRANGER = 65534  # nobody: another local user's files, made here as root


def planted(kind, path, data=b"the attacker's bytes"):
    """Put at ``path`` what another local user could: a file of theirs, a FIFO, a link."""
    if kind == "file":
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, STRANGER, STRANGER)
    elif kind == "fifo":
        os.mkfifo(path, 0o666)
        os.chown(path, STRANGER, STRANGER)
    else:
        os.symlink("/etc/hostname", path)


@pytest.mark.parametrize("kind", ["file", "fifo", "link"])
def test_a_retry_never_reads_what_another_user_put_at_a_claimed_name(kind):
    """An executor claimed a big argument's file (renamed it): its name is free
    again. A retry must send the client's bytes, not what was put there since."""
    if os.getuid() != 0:
        pytest.skip("making another user's file needs root")
    data = numpy.arange(200_000, dtype=numpy.float64)
    ref = shm.export(memoryview(data), os.getpid())
    claimed = ref.path + "-claimed"
    os.rename(ref.path, claimed)  # as an executor's attach does
    try:
        planted(kind, ref.path, bytes(len(data) * 8) if kind == "file" else b"x")
        assert not shm.unclaimed([ref])  # not ours: it does not count as our file, unclaimed
        sent = shm.inline(ref)  # returns at once, even for a FIFO
        assert bytes(sent) == data.tobytes()
        with pytest.raises(shm.DataUnreachable, match="not a regular file of this user"):
            shm.attach(ref)  # an executor never maps it either
    finally:
        for path in (ref.path, claimed):
            if os.path.lexists(path):
                os.unlink(path)
