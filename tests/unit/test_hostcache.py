"""One copy per host (cw.worker.hostcache): the first executor of a host
fetches a blob, the others map its copy; the copies are this user's alone
and go with the executor that kept them."""
import os
import time

import pytest
from test_blobs import Sent, fetch_all, make_closure, small_threshold  # noqa: F401

from cw import blobs, serialize, shm
from cw.serialize import dumps_call, loads_call
from cw.worker import hostcache
from cw.worker.fetch import Fetcher
from cw.worker.hostcache import HostCache

KEY = bytes(range(32))


@pytest.fixture
def where(tmp_path):
    if shm.host_key() is None:
        pytest.skip("no shared memory here")
    path = tmp_path / "blobs"
    path.mkdir(mode=0o700)
    return path


def test_one_executor_fetches_the_others_map_its_copy_and_it_goes_with_it(where):
    first, second = HostCache(1 << 30, where), HostCache(1 << 30, where)
    assert second.open(KEY) is None
    assert first.claim(KEY) and not second.claim(KEY)  # the second waits for the first
    fd = first.publish(KEY, b"the blob")
    os.close(fd)
    [kept] = os.listdir(where)
    assert kept == f"{KEY.hex()}-{shm.pid_namespace()}-{os.getpid()}"
    fd = second.open(KEY)
    with open(fd, "rb") as f:
        assert f.read() == b"the blob"
    first.close()
    assert os.listdir(where) == []


def test_a_fetcher_that_died_is_taken_over_and_a_failed_fetch_freed(where):
    first, second = HostCache(1 << 30, where), HostCache(1 << 30, where)
    assert first.claim(KEY)
    old = time.time() - hostcache.STALE_SECONDS - 1
    os.utime(where / f"{KEY.hex()}.part", (old, old))
    assert second.claim(KEY)  # the first stopped touching it long ago: taken over
    assert not first.claim(KEY)  # the second fetches it now
    second.abandon(KEY)  # its fetch failed: the claim is free for another try
    assert first.claim(KEY)
    first.abandon(KEY)
    assert os.listdir(where) == []


def test_what_another_user_put_there_is_never_used(where):
    if os.getuid() != 0:
        pytest.skip("making another user's file needs root")
    name = where / f"{KEY.hex()}-{shm.pid_namespace()}-1"
    name.write_bytes(b"the attacker's bytes")
    os.chown(name, 65534, 65534)
    (where / f"{KEY.hex()}-{shm.pid_namespace()}-2").symlink_to("/etc/hostname")
    assert HostCache(1 << 30, where).open(KEY) is None


def test_copies_of_dead_executors_idle_ones_and_the_oldest_past_the_bound_go(where):
    ns = shm.pid_namespace()
    dead = where / f"{'a' * 64}-{ns}-999999999"
    idle = where / f"{'b' * 64}-{ns}-{os.getpid()}"
    old, new = where / f"{'c' * 64}-{ns}-{os.getpid()}", where / f"{'d' * 64}-{ns}-{os.getpid()}"
    for path in (dead, idle, old, new):
        path.write_bytes(b"x" * 100)
    past = time.time() - hostcache.IDLE_SECONDS - 1
    os.utime(idle, (past, past))
    os.utime(old, (time.time() - 10, time.time() - 10))
    HostCache(150, where).tidy(time.monotonic())
    assert sorted(os.listdir(where)) == [new.name]


def test_the_second_executor_of_a_host_runs_the_job_without_a_fetch(where, small_threshold):  # noqa: F811
    call = dumps_call(make_closure(b"y" * 50_000), (1,), {})
    frames = (b"{}", *call)
    first = Fetcher(Sent(), host=HostCache(1 << 30, where))
    second = Fetcher(Sent(), host=HostCache(1 << 30, where))
    assert not first.ready(1, frames, 0.0)  # it claims the blob for the host and asks for it
    assert not second.ready(2, frames, 0.0) and second.pending  # it waits for the first
    assert second.send.sent == []
    assert fetch_all(first, blobs.answer, 1, call) is None
    serialize.fetched.entries.clear()
    serialize.functions.entries.clear()  # as if the second were another process
    assert second.ready(2, frames, 0.0) and not second.pending
    assert second.send.sent == [] and second.from_host == 1 and second.fetched == 0
    assert loads_call(call)[0](1) == 50_001
    first.close()
    second.close()
    assert os.listdir(where) == []


def test_a_client_of_the_host_puts_its_own_copy_there_and_takes_it_away(where, small_threshold,  # noqa: F811
                                                                         monkeypatch):
    """A client whose executors share its host: none of them fetches its blob."""
    monkeypatch.setattr(blobs, "host_directory", lambda: where)
    monkeypatch.setattr(blobs, "executors_here", lambda: True)
    f = make_closure(b"y" * 50_000)
    call = dumps_call(f, (1,), {}, shared=True)
    key = blobs.reference(call[0])
    [placed] = os.listdir(where)
    assert placed == f"{key.hex()}-{shm.pid_namespace()}-{os.getpid()}"  # after the client
    assert (where / placed).stat().st_mode & 0o777 == 0o600
    dumps_call(f, (2,), {}, shared=True)
    assert os.listdir(where) == [placed]  # once
    executor = Fetcher(Sent(), host=HostCache(1 << 30, where))
    serialize.functions.entries.clear()  # as if the executor were another process
    assert executor.ready(1, (b"{}", *call), 0.0)
    assert executor.send.sent == [] and executor.from_host == 1 and executor.fetched == 0
    assert loads_call(call)[0](1) == 50_001
    blobs.store.close()  # the client closes
    assert os.listdir(where) == []
    assert loads_call(call)[0](3) == 50_003  # what the executor mapped stays
    executor.close()


def test_no_copy_from_a_client_without_shared_memory_or_while_an_executor_fetches_one(
        where, small_threshold, monkeypatch):  # noqa: F811
    monkeypatch.setattr(blobs, "host_directory", lambda: where)
    monkeypatch.setattr(blobs, "executors_here", lambda: True)
    dumps_call(make_closure(b"y" * 50_000), (1,), {})  # shared=False: a stranger to the host
    assert os.listdir(where) == []
    f = make_closure(b"z" * 50_000)
    key = blobs.digest(serialize.dumps_function(f))
    fetching = HostCache(1 << 30, where)
    assert fetching.claim(key)  # an executor of the host fetches it now
    dumps_call(f, (1,), {}, shared=True)
    assert os.listdir(where) == [f"{key.hex()}.part"]
    fetching.abandon(key)


def test_the_copy_stays_for_the_next_sweep_and_goes_with_the_client(where, small_threshold,  # noqa: F811
                                                                     monkeypatch):
    """A blob bigger than the store keeps once no job needs it: written once,
    not again for each job of a loop of submit-then-wait."""
    monkeypatch.setattr(blobs, "host_directory", lambda: where)
    monkeypatch.setattr(blobs, "executors_here", lambda: True)
    monkeypatch.setattr(blobs.Store, "RECENT_BYTES", 0)  # nothing kept once no job needs it
    f = make_closure(b"y" * 50_000)
    call = dumps_call(f, (1,), {}, shared=True)
    [placed] = os.listdir(where)
    written = os.stat(where / placed).st_mtime_ns
    blobs.store.let_go((b"ctx", *call))
    call = dumps_call(f, (2,), {}, shared=True)
    assert os.listdir(where) == [placed] and os.stat(where / placed).st_mtime_ns == written
    blobs.store.close()
    assert os.listdir(where) == []


def test_no_copy_where_no_executor_of_the_host_runs(where, small_threshold, monkeypatch):  # noqa: F811
    """A client on a login node: its executors are elsewhere, and its own
    /dev/shm is not filled for them."""
    monkeypatch.setattr(blobs, "host_directory", lambda: where)
    lanes_dir = where.parent / "lanes"
    lanes_dir.mkdir(mode=0o700)
    monkeypatch.setattr(blobs.shmdir, "subdirectory", lambda name: (lanes_dir, ""))
    ns = shm.pid_namespace()
    (lanes_dir / f"lane-{ns}-999999999").write_bytes(b"")  # an executor that died
    assert not blobs.executors_here()
    dumps_call(make_closure(b"y" * 50_000), (1,), {}, shared=True)
    assert os.listdir(where) == []
    (lanes_dir / f"lane-{ns}-{os.getpid()}").write_bytes(b"")  # one that runs
    assert blobs.executors_here()


def test_a_part_whose_writer_died_is_tidied(where):
    part = where / f"{'e' * 64}.part"
    part.write_bytes(b"half")
    fresh = where / f"{'f' * 64}.part"
    fresh.write_bytes(b"being written")
    old = time.time() - hostcache.STALE_SECONDS - 1
    os.utime(part, (old, old))
    HostCache(1 << 30, where).tidy(time.monotonic())
    assert os.listdir(where) == [fresh.name]


def test_a_forked_child_leaves_its_parents_copies(where, small_threshold, monkeypatch):  # noqa: F811
    monkeypatch.setattr(blobs, "host_directory", lambda: where)
    monkeypatch.setattr(blobs, "executors_here", lambda: True)
    dumps_call(make_closure(b"y" * 50_000), (1,), {}, shared=True)
    [placed] = os.listdir(where)
    pid = os.fork()
    if pid == 0:  # the child: exits as a normal process would, closing its store
        blobs.store.close()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert os.listdir(where) == [placed]
    blobs.store.close()
