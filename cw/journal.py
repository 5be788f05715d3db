"""A sweep's journal: results kept on disk, so that a rerun submits only what is missing.

``ClusterExecutor(journal="sweep.cwj")`` appends each job's result, once it
succeeded, to the journal under a key: a hash of the call (``call_key``),
that is of its function (its code's ``fingerprint``, its closure's and
defaults' values) and of its arguments. The same program run again finds
the results it has, and their futures are done at once; only the missing
jobs go to the cluster. A failed job is not kept: a rerun tries it again.

The file is a run of records, each whole or not at all::

    "CWJ1" (once, at the start)
    record: u32 length | u8 kind | body | u32 CRC-32 of kind and body
        kind F: {"name": a function's module.qualname, "code": its fingerprint}
        kind R: the call's 16-byte key, then its result, pickled

Each record is written with one ``write(2)`` to a descriptor opened with
``O_APPEND``: a client killed mid-write leaves at most one torn record at
the end, which the next open cuts off (its job runs again). The index
(``Index``) holds no result: the first 8 bytes of each result's key and its
offset, in an open-addressing table of two arrays, at most half full (16
to 32 bytes per result, and no Python object per entry: 1,000,000 results
take 32 MiB); a lookup reads the record and compares its whole key and its
CRC.

When a function's code is not the code the journal knows under its name,
its results there are not this code's: ``JournalMismatchError``, unless the
executor was made with ``journal_mismatch="ignore"`` (the old results are
passed over, the new ones kept beside them).
"""
from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import stat
import struct
import threading
import types
import zlib
from pathlib import Path
from typing import Any, Optional, Union

import cloudpickle

from . import blobs
from .errors import JournalError, JournalMismatchError

log = logging.getLogger(__name__)

MAGIC = b"CWJ1"
_HEAD = struct.Struct("<IB")  # length of kind and body, kind
_CRC = struct.Struct("<I")
KEY_BYTES = 16
FUNCTION, RESULT = 0x46, 0x52  # b"F", b"R"


# -- keys ----------------------------------------------------------------------
def _target(fn: Any) -> Any:
    """The function whose code counts: a bound method's, a partial's."""
    while True:
        if isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif hasattr(fn, "func") and hasattr(fn, "args") and callable(fn.func):
            fn = fn.func  # functools.partial: its arguments are pickled with the call
        else:
            return fn


def name_of(fn: Any) -> str:
    fn = _target(fn)
    return f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _code_digest(code: types.CodeType, h: Any) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)  # a nested function's, a lambda's, a comprehension's
        else:
            h.update(repr(const).encode())


def fingerprint(fn: Any) -> str:
    """A hash of a function's code (bytecode, names, constants, nested code);
    of a callable object's ``__call__``; else of its pickle."""
    fn = _target(fn)
    call = next((vars(k)["__call__"] for k in type(fn).__mro__ if "__call__" in vars(k)), None)
    code = getattr(fn, "__code__", None) or getattr(call, "__code__", None)
    h = hashlib.blake2b(digest_size=16, person=b"cw-journal-code")
    if code is not None:
        _code_digest(code, h)
    else:
        h.update(cloudpickle.dumps(fn))
    return h.hexdigest()


class _Fn:
    """What a function stands for in a key's pickle (never unpickled)."""


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return _Fn


class _KeyPickler(cloudpickle.Pickler):
    """A call's pickle for its key: a function as its name, code fingerprint,
    defaults and closure values, whether it would pickle by reference or not."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            cells = tuple(_cell(c) for c in obj.__closure__ or ())
            return _Fn, (name_of(obj), fingerprint(obj), obj.__defaults__, obj.__kwdefaults__, cells)
        return NotImplemented


class _Sink(io.RawIOBase):
    def __init__(self, h: Any) -> None:
        self.h = h

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.h.update(data)
        return len(data)


def call_key(fn: Any, args: tuple, kwargs: dict, code: str = "") -> bytes:
    """The 16-byte key of a call whose function's code is ``code`` (its
    fingerprint). Big buffers (numpy arrays) go in as their digest
    (``blobs.digest``), not copied into the stream."""
    h = hashlib.blake2b(code.encode(), digest_size=KEY_BYTES, person=b"cw-journal-call")

    def buffer(buf: pickle.PickleBuffer) -> bool:
        try:
            h.update(blobs.digest(buf.raw()))
            return False
        except BufferError:  # not contiguous: in the stream after all
            return True

    _KeyPickler(_Sink(h), protocol=5, buffer_callback=buffer).dump((fn, args, sorted(kwargs.items())))
    return h.digest()


def _record(kind: int, body: bytes) -> bytes:
    crc = zlib.crc32(body, zlib.crc32(bytes([kind])))
    return _HEAD.pack(len(body) + 1, kind) + body + _CRC.pack(crc)


def _whole(kind: int, body: bytes, crc: bytes) -> bool:
    return len(crc) == _CRC.size and _CRC.unpack(crc)[0] == zlib.crc32(body, zlib.crc32(bytes([kind])))


# -- the file ------------------------------------------------------------------
class Journal:
    """One journal file, open for lookups and appends (see the module)."""

    def __init__(self, path: Union[str, os.PathLike], mismatch: str = "refuse") -> None:
        if mismatch not in ("refuse", "ignore"):
            raise ValueError("journal_mismatch must be 'refuse' or 'ignore'")
        self.path = Path(path)
        self.mismatch = mismatch
        self.lock = threading.Lock()  # lookups in callers' threads, appends in the I/O thread's
        self.functions: dict[str, str] = {}  # name -> fingerprint, as the journal has it
        self.index = Index()
        self.checked: dict[int, tuple[Any, str]] = {}  # id(code) -> (code, its checked fingerprint)
        self.hits = self.kept = 0
        self.fd = _open_private(self.path)
        try:
            _lock(self.fd, self.path)
            self.size = self._scan()
        except BaseException:
            os.close(self.fd)
            raise

    def _scan(self) -> int:
        """Index what the file holds; cut off a torn last record. Returns its length."""
        end = os.fstat(self.fd).st_size
        if end == 0:
            os.write(self.fd, MAGIC)
            return len(MAGIC)
        if os.pread(self.fd, len(MAGIC), 0) != MAGIC:
            raise JournalError(f"{self.path} is not a cw journal (it does not begin with {MAGIC.decode()})")
        prefixes, offsets = array.array("Q"), array.array("Q")  # 16 bytes a result, then the table
        at = len(MAGIC)
        with open(self.fd, "rb", buffering=1 << 20, closefd=False) as f:
            f.seek(at)
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    break
                length, kind = _HEAD.unpack(head)
                after = at + _HEAD.size + length - 1 + _CRC.size
                if length <= KEY_BYTES or after > end or kind not in (FUNCTION, RESULT):
                    break  # torn, or not a record: nothing from here on is trusted
                if kind == RESULT:  # its body is read (and checked) when it is looked up
                    prefixes.append(int.from_bytes(f.read(8), "little"))
                    offsets.append(at)
                    f.seek(after)
                else:
                    body = f.read(length - 1)
                    if not _whole(kind, body, f.read(_CRC.size)):
                        break
                    entry = json.loads(body)
                    self.functions[entry["name"]] = entry["code"]
                at = after
        if at < end:
            os.ftruncate(self.fd, at)
        self.index = Index(len(prefixes))
        for prefix, offset in zip(prefixes, offsets):
            self.index.add(prefix, offset)
        return at

    def get(self, key: bytes) -> tuple[bool, Any]:
        """(True, the result) if the journal holds the call ``key``, else (False, None)."""
        with self.lock:
            for offset in self.index.find(int.from_bytes(key[:8], "little")):
                body = self._read(offset)
                if body is not None and body[:KEY_BYTES] == key:
                    self.hits += 1
                    return True, pickle.loads(body[KEY_BYTES:])
        return False, None

    def _read(self, offset: int) -> Optional[bytes]:
        """A result record's body (key and pickle), or None if it is damaged."""
        length, kind = _HEAD.unpack(os.pread(self.fd, _HEAD.size, offset))
        raw = os.pread(self.fd, length - 1 + _CRC.size, offset + _HEAD.size)
        body, crc = raw[:-_CRC.size], raw[-_CRC.size:]
        return body if kind == RESULT and _whole(kind, body, crc) else None

    def code_of(self, fn: Any) -> str:
        """``fn``'s fingerprint, once checked against what the journal knows
        under its name (and, if new there, said in it): another code is
        refused, or, with ``mismatch="ignore"``, its results passed over
        (their keys hold the old fingerprint)."""
        target = _target(fn)
        mark = getattr(target, "__code__", None) or target  # one entry for every closure of one code
        seen = self.checked.get(id(mark))
        if seen is not None and seen[0] is mark:
            return seen[1]
        name, code = name_of(fn), fingerprint(fn)
        if "<lambda>" in name or "<locals>" in name:  # a name many functions share: no version to check
            self.checked[id(mark)] = (mark, code)
            return code
        with self.lock:
            had = self.functions.get(name)
            if had is not None and had != code and self.mismatch == "refuse":
                raise JournalMismatchError(
                    f"{self.path} holds results of {name} computed by other code than it has now: "
                    "they may not be its results any more. Remove the journal to start afresh, give "
                    "this run another journal, or pass journal_mismatch='ignore' to run its jobs "
                    "again and keep the new results beside the old")
            if had != code:
                self.functions[name] = code
                self._append(_record(FUNCTION, json.dumps({"name": name, "code": code}).encode()))
        self.checked[id(mark)] = (mark, code)
        return code

    def put(self, key: bytes, value: Any) -> None:
        """Keep a call's result (one that cannot be pickled is not kept)."""
        try:
            record = _record(RESULT, key + cloudpickle.dumps(value, protocol=5))
        except Exception:
            return
        with self.lock:
            if self.fd < 0:
                return
            try:
                self.index.add(int.from_bytes(key[:8], "little"), self._append(record))
            except OSError as e:  # quota, a full disk, a stale NFS handle: the sweep goes on
                log.warning("journal %s: cannot write (%s); results are no longer kept in it", self.path, e)
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = -1
                return
            self.kept += 1

    def _append(self, record: bytes) -> int:
        offset, view = self.size, memoryview(record)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(record)
        return offset

    def close(self) -> None:
        with self.lock:
            if self.fd >= 0:
                os.close(self.fd)  # its lock with it
                self.fd = -1


class Index:
    """Offsets of records by the first 8 bytes of their key: open addressing,
    linear probing, in two arrays at most half full. A prefix that is 0
    counts as 1 (0 marks a free slot); two keys with one prefix take two
    slots, and a lookup yields both offsets."""

    def __init__(self, expected: int = 0) -> None:
        size = 1024
        while size < 2 * expected:
            size *= 2
        self.prefixes = array.array("Q", [0]) * size
        self.offsets = array.array("Q", [0]) * size
        self.mask, self.count = size - 1, 0

    def add(self, prefix: int, offset: int) -> None:
        if 2 * (self.count + 1) > len(self.prefixes):
            self._grow()
        prefix = prefix or 1
        i = prefix & self.mask
        while self.prefixes[i]:
            i = (i + 1) & self.mask
        self.prefixes[i], self.offsets[i] = prefix, offset
        self.count += 1

    def find(self, prefix: int) -> list[int]:
        prefix = prefix or 1
        found, i = [], prefix & self.mask
        while self.prefixes[i]:
            if self.prefixes[i] == prefix:
                found.append(self.offsets[i])
            i = (i + 1) & self.mask
        return found

    def _grow(self) -> None:
        old = self.prefixes, self.offsets
        self.__init__(self.count + 1)  # type: ignore[misc]  # twice the size
        for prefix, offset in zip(*old):
            if prefix:
                self.add(prefix, offset)


def _open_private(path: Path) -> int:
    """The journal's descriptor: made 0600, never through a link, a regular file of ours."""
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise JournalError(f"{path} is a symbolic link: a journal is opened only as itself") from e
        raise JournalError(f"cannot open the journal {path}: {e.strerror}") from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise JournalError(f"{path} is not a regular file of yours: not used as a journal")
    if info.st_mode & 0o022:  # another user could add a record: its pickle would run here
        os.close(fd)
        raise JournalError(f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                           f"not used as a journal; chmod 600 {path}")
    os.fchmod(fd, 0o600)
    return fd


def _lock(fd: int, path: Path) -> None:
    """One program at a time appends to a journal (where the filesystem has locks)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise JournalError(f"{path} is in use by another program, which holds its lock: wait "
                               "for it to end, or give this one another journal") from e
