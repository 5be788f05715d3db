"""Sealed frames: the direct path's bulk channel (``cw.direct``).

CURVE seals every ZeroMQ frame with XSalsa20-Poly1305: about 500 MiB/s per
stream on a compute node, which caps a big blob or result between two hosts
below what plain TCP carries. AES-256-GCM, with the AES instructions every
x86-64 and ARMv8 server has, seals several GiB/s. So the direct path's ends
agree on a fresh key over their CURVE socket (authenticated both ways with
the cluster's keys) and move the bulk bytes on a plain socket beside it,
each frame sealed here under that key::

    [counter (8 bytes)] [sealed frame] [sealed frame] ...

Each frame's nonce is the direction's tag and its own counter, which only
grows, so no nonce is used twice under one key and a replayed message is
refused. The associated data binds the session and the frame count, so
frames cannot be moved between sessions or cut off a message. A frame that
fails to open drops its whole message.

``open`` opens the first frame (the message's header) and leaves the
payload sealed (``Sealed``), for the receiver to open straight into the
buffer the bytes belong in: a chunk of a 64 MiB blob is written once.

The cipher comes from ``cryptography`` (OpenSSL): a well-kept, audited AEAD
that releases the GIL while it works. Where it cannot be imported the
direct path stays on CURVE alone.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import zmq

from .blobs import CHUNK

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - a dependency; the direct path then seals with CURVE
    AESGCM = None

KEY_BYTES = 32
SESSION_BYTES = 16
TERMS_BYTES = SESSION_BYTES + KEY_BYTES  # what the CURVE socket carries: the session, the key
CLIENT, EXECUTOR = b"cw-c", b"cw-e"  # nonce tags: who sealed
_COUNTER = 8
MAX_FRAMES = 16  # a direct-path message has two or three frames
TAG_BYTES = 16
REUSE_ABOVE = 64 << 10  # frames this big are sealed into a reused buffer


def available() -> bool:
    return AESGCM is not None


def new_terms() -> bytes:
    """A fresh session name and key; the name is a ZeroMQ routing id, which
    must not start with a zero byte."""
    session = bytes([os.urandom(1)[0] | 1]) + os.urandom(SESSION_BYTES - 1)
    return session + os.urandom(KEY_BYTES)


class Sealed:
    """A payload frame not yet opened: ``into`` a buffer of the receiver's
    (no copy of its own), or ``bytes()``."""

    __slots__ = ("aead", "nonce", "data", "aad")

    def __init__(self, aead: Any, nonce: bytes, data: Any, aad: bytes) -> None:
        self.aead, self.nonce, self.data, self.aad = aead, nonce, data, aad

    def __len__(self) -> int:
        return max(0, len(self.data) - TAG_BYTES)

    def __bytes__(self) -> bytes:
        return self.aead.decrypt(self.nonce, self.data, self.aad)

    def into(self, buffer: Any) -> bool:
        """Open into ``buffer`` (exactly ``len(self)`` bytes); False if it
        does not open (what the buffer holds then is undefined)."""
        try:
            if hasattr(self.aead, "decrypt_into"):
                self.aead.decrypt_into(self.nonce, self.data, self.aad, buffer)
            else:  # pragma: no cover - cryptography before 45
                buffer[:] = self.aead.decrypt(self.nonce, self.data, self.aad)
        except (InvalidTag, ValueError, TypeError):
            return False
        return True


def put(buffer: Any, offset: int, chunk: Any) -> bool:
    """Write a payload frame, sealed or not, at ``offset`` of ``buffer``."""
    if isinstance(chunk, Sealed):
        with memoryview(buffer) as view:
            return chunk.into(view[offset:offset + len(chunk)])
    buffer[offset:offset + len(chunk)] = chunk
    return True


class Seal:
    """One session's two directions: ``seal`` what this end sends, ``open``
    what the other end sent."""

    def __init__(self, terms: bytes, mine: bytes, scratch: Optional[list] = None) -> None:
        if len(terms) != TERMS_BYTES or AESGCM is None:
            raise ValueError("bad session terms")
        self.session = terms[:SESSION_BYTES]
        self.aead = AESGCM(terms[SESSION_BYTES:])
        self.mine, self.theirs = mine, (EXECUTOR if mine == CLIENT else CLIENT)
        self.sent = 0  # the next counter this end seals with
        # [bytearray] where a message's last big frame is sealed, reused: one
        # per process's end (the client's sessions share theirs).
        self.scratch = scratch if scratch is not None else [bytearray()]
        self.next = 0  # the lowest counter the other end may still use

    def _aad(self, count: int) -> bytes:
        return self.session + bytes([count])

    def seal(self, frames: Sequence[Any]) -> list:
        """The frames sealed; the last, if big, in the scratch buffer, valid
        until the next call (send it with a copy: ``send_copied``)."""
        aad = self._aad(len(frames))
        out: list = [self.sent.to_bytes(_COUNTER, "big")]
        for i, frame in enumerate(frames):
            nonce = self.mine + self.sent.to_bytes(_COUNTER, "big")
            size = memoryview(frame).nbytes
            if size < REUSE_ABOVE or i < len(frames) - 1 or not hasattr(self.aead, "encrypt_into"):
                out.append(self.aead.encrypt(nonce, frame, aad))
            else:  # no fresh 4 MiB for each chunk: the kernel clears every new page, a cost here
                if len(self.scratch[0]) != size + TAG_BYTES:
                    self.scratch[0] = bytearray(size + TAG_BYTES)
                self.aead.encrypt_into(nonce, frame, aad, self.scratch[0])
                out.append(self.scratch[0])
            self.sent += 1
        return out

    def open(self, frames: Sequence[Any]) -> Optional[list]:
        """The header opened and the payload ``Sealed``; None for a replay,
        a forgery, a cut message."""
        if not 2 <= len(frames) <= MAX_FRAMES + 1 or len(frames[0]) != _COUNTER:
            return None
        first = int.from_bytes(bytes(frames[0]), "big")
        if first < self.next:
            return None
        aad = self._aad(len(frames) - 1)
        sealed = [getattr(frame, "buffer", frame) for frame in frames[1:]]  # a zmq.Frame: its memoryview
        try:
            header = self.aead.decrypt(self._nonce(first), sealed[0], aad)
        except (InvalidTag, ValueError, TypeError):
            return None
        self.next = first + len(sealed)
        return [header, *(Sealed(self.aead, self._nonce(first + i), frame, aad)
                          for i, frame in enumerate(sealed[1:], 1))]

    def _nonce(self, counter: int) -> bytes:
        return self.theirs + counter.to_bytes(_COUNTER, "big")


def send_copied(sock: Any, frames: list) -> None:
    """Send sealed frames, each copied into a message of ZeroMQ's own: the
    sealing buffer is reused at once."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _SNDMORE if i < last else 0, copy=True)


_SNDMORE = int(zmq.SNDMORE)


def keep_freed_memory() -> None:
    """Let glibc keep freed chunk-sized blocks for reuse (once per process,
    when a sealed session starts): the 4 MiB messages ZeroMQ allocates for
    each chunk would otherwise be mapped afresh each time, and the kernel
    clears every new page, which costs as much as the chunk's encryption.
    Up to ``KEEP_BYTES`` of freed memory stay with the process. A user's own
    malloc settings (``MALLOC_*_`` or ``GLIBC_TUNABLES`` in the environment)
    are left alone."""
    global _kept
    if _kept or "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") for k in os.environ):
        return
    _kept = True
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, 2 * CHUNK)
    mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES)


_kept = False
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 64 << 20
