"""The journal of a sweep (cw.journal): keys, the file, its index, and its failures."""
import functools
import os
import subprocess
import sys
import textwrap

import pytest

from cw import journal
from cw.journal import Journal, JournalError, JournalMismatchError, call_key, fingerprint


def simulate(x, scale=2):
    return x * scale


def make_model(table):
    def model(x):
        return table[x]
    return model


def keep(j, fn, args, value):
    key = call_key(fn, args, {}, j.code_of(fn))
    j.put(key, value)
    return key


def test_a_call_has_one_key_in_every_process():
    """The same call keys the same in another interpreter (another hash seed)."""
    here = call_key(simulate, (3, {"a": [1, 2]}), {"scale": 4}, fingerprint(simulate)).hex()
    program = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_journal import simulate
        from cw.journal import call_key, fingerprint
        print(call_key(simulate, (3, {"a": [1, 2]}), {"scale": 4}, fingerprint(simulate)).hex())
    """)
    done = subprocess.run([sys.executable, "-c", program, os.path.dirname(__file__)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == here


def test_a_key_tells_arguments_closures_and_code_apart():
    code = fingerprint(simulate)
    keys = {
        call_key(simulate, (1,), {}, code),
        call_key(simulate, (2,), {}, code),
        call_key(simulate, (1,), {"scale": 3}, code),
        call_key(make_model([1, 2]), (1,), {}, code),
        call_key(make_model([1, 3]), (1,), {}, code),
        call_key(simulate, (1,), {}, "another code"),
        call_key(functools.partial(simulate, scale=5), (1,), {}, code),
    }
    assert len(keys) == 7
    assert call_key(make_model([1, 2]), (1,), {}, code) == call_key(make_model([1, 2]), (1,), {}, code)


def test_a_function_body_changed_is_another_fingerprint():
    first, same, changed = {}, {}, {}
    exec("def f(x):\n    return x + 1\n", first)
    exec("def f(x):\n    return x + 1\n", same)
    exec("def f(x):\n    return x + 2\n", changed)
    assert fingerprint(first["f"]) == fingerprint(same["f"]) != fingerprint(changed["f"])
    assert fingerprint(functools.partial(first["f"], 1)) == fingerprint(first["f"])


def test_big_buffers_are_named_by_their_digest_not_copied():
    np = pytest.importorskip("numpy")
    a = np.arange(1 << 20, dtype=np.float64)
    b = a.copy()
    code = fingerprint(simulate)
    assert call_key(simulate, (a,), {}, code) == call_key(simulate, (b,), {}, code)
    b[-1] = -1
    assert call_key(simulate, (a,), {}, code) != call_key(simulate, (b,), {}, code)


def test_results_come_back_after_a_reopen_and_a_miss_is_a_miss(tmp_path):
    path = tmp_path / "sweep.cwj"
    j = Journal(path)
    keys = [keep(j, simulate, (i,), {"value": i}) for i in range(100)]
    assert j.get(keys[7]) == (True, {"value": 7})
    j.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    j = Journal(path)
    assert [j.get(k)[1]["value"] for k in keys] == list(range(100))
    assert j.get(call_key(simulate, (1000,), {}, fingerprint(simulate))) == (False, None)
    j.close()


def test_the_index_grows_and_keeps_keys_that_share_a_prefix():
    index = journal.Index()
    for i in range(3000):  # past its first size, twice
        index.add(i * 1024, i)  # the same slot, were it not for probing
    index.add(0, 7)
    index.add(1, 8)  # 0 counts as 1: both are found under either
    index.add(5 * 1024, 9)  # a second key with one prefix
    assert len(index.prefixes) == 8192 and index.count == 3003
    assert all(index.find(i * 1024) == [i] for i in range(1, 3000) if i != 5)
    assert index.find(5 * 1024) == [5, 9] and index.find(123) == []
    assert sorted(index.find(0)) == sorted(index.find(1)) == [0, 7, 8]  # i = 0 went in as 0 too


def test_many_results_after_a_reopen(tmp_path):
    path = tmp_path / "sweep.cwj"
    j = Journal(path)
    keys = [keep(j, simulate, (i,), i) for i in range(3000)]
    j.close()
    j = Journal(path)
    assert j.index.count == 3000 and len(j.index.prefixes) == 8192  # sized once, for what it holds
    assert all(j.get(k) == (True, i) for i, k in enumerate(keys))
    j.close()


def test_a_torn_last_record_is_cut_off_and_its_job_runs_again(tmp_path):
    path = tmp_path / "sweep.cwj"
    j = Journal(path)
    keys = [keep(j, simulate, (i,), i) for i in range(10)]
    j.close()
    whole = path.stat().st_size
    with open(path, "ab") as f:  # what a client killed halfway through a write leaves
        f.write(journal._record(journal.RESULT, keys[0][:8] + b"\x00" * 100)[:60])
    j = Journal(path)
    assert path.stat().st_size == whole
    assert all(j.get(k) == (True, i) for i, k in enumerate(keys))
    later = keep(j, simulate, (10,), 10)
    j.close()
    assert Journal(path).get(later) == (True, 10)


def test_a_damaged_record_is_a_miss_not_an_error(tmp_path):
    path = tmp_path / "sweep.cwj"
    j = Journal(path)
    keys = [keep(j, simulate, (i,), "x" * 50) for i in range(3)]
    j.close()
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # in the last result's pickle: its CRC no longer matches
    path.write_bytes(bytes(raw))
    j = Journal(path)
    assert j.get(keys[0]) == (True, "x" * 50) and j.get(keys[2]) == (False, None)
    j.close()


def test_other_code_under_the_same_name_is_refused_or_passed_over(tmp_path):
    path = tmp_path / "sweep.cwj"
    old, new = {"__name__": "sweep"}, {"__name__": "sweep"}
    exec("def f(x):\n    return x + 1\n", old)
    exec("def f(x):\n    return x + 2\n", new)
    j = Journal(path)
    key = keep(j, old["f"], (1,), 2)
    j.close()
    j = Journal(path)
    with pytest.raises(JournalMismatchError, match="sweep.f computed by other code.*mismatch='ignore'"):
        j.code_of(new["f"])
    j.close()
    j = Journal(path, mismatch="ignore")
    assert call_key(new["f"], (1,), {}, j.code_of(new["f"])) != key  # its jobs run again
    j.close()
    j = Journal(path)  # the new code is the journal's now
    assert j.code_of(new["f"]) == fingerprint(new["f"])
    j.close()


def test_files_that_are_no_journal_of_ours_are_refused(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("my notes\n")
    with pytest.raises(JournalError, match="not a cw journal"):
        Journal(other)
    assert other.read_text() == "my notes\n"
    link = tmp_path / "link.cwj"
    link.symlink_to(tmp_path / "elsewhere.cwj")
    with pytest.raises(JournalError, match="symbolic link"):
        Journal(link)
    assert not (tmp_path / "elsewhere.cwj").exists()
    with pytest.raises(JournalError, match="cannot open the journal"):
        Journal(tmp_path / "no" / "such" / "dir.cwj")
    with pytest.raises(ValueError, match="journal_mismatch"):
        Journal(tmp_path / "x.cwj", mismatch="maybe")


def test_one_program_at_a_time(tmp_path):
    first = Journal(tmp_path / "sweep.cwj")
    with pytest.raises(JournalError, match="in use by another program"):
        Journal(tmp_path / "sweep.cwj")
    first.close()
    Journal(tmp_path / "sweep.cwj").close()


def test_lambdas_share_a_name_but_not_a_version(tmp_path):
    j = Journal(tmp_path / "sweep.cwj")
    first, second = (lambda x: x + 1), (lambda x: x * 2)
    assert j.code_of(first) != j.code_of(second)  # no JournalMismatchError: two functions, one name
    j.close()


def test_a_journal_others_may_write_is_refused(tmp_path):
    path = tmp_path / "sweep.cwj"
    Journal(path).close()
    path.chmod(0o664)  # a umask of 002, or a copy
    with pytest.raises(JournalError, match="writable by others.*chmod 600"):
        Journal(path)
    path.chmod(0o640)
    Journal(path).close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"  # tightened


def test_a_failed_write_stops_the_journal_not_the_sweep(tmp_path, caplog):
    j = Journal(tmp_path / "sweep.cwj")
    os.close(j.fd)  # what a stale NFS handle does to a write
    j.put(call_key(simulate, (1,), {}, fingerprint(simulate)), 1)
    assert j.fd == -1 and j.kept == 0 and "cannot write" in caplog.text
    j.close()
