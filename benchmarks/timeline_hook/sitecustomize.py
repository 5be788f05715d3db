"""Records when each cw message leaves and arrives, for benchmarks/timeline.py.

On PYTHONPATH with ``CW_TIMELINE_DIR`` set, a master or executor process
wraps ``send_frames``/``recv_frames`` and at exit writes one line per
message: ``perf_counter() direction kind``. Nothing else changes. (Being a
``sitecustomize``, it hides any other one for the processes it runs in.)
"""
from __future__ import annotations

import atexit
import os
import sys
import time


def _kind(frames: list) -> str:
    for frame in frames[:2]:  # a ROUTER's first frame is the peer's identity
        head = bytes(getattr(frame, "buffer", frame)[:4])  # a zmq.Frame: no copy
        if head[:2] == b"CW" and len(head) == 4:
            return chr(head[3])
    return "?"


_LOG: list = []
_WHERE: list = []  # the file this process writes, once installed


def install(role: str, out: str) -> None:
    from cw import transport

    clock = time.perf_counter
    send, recv = transport.send_frames, transport.recv_frames

    def send_frames(sock, frames, *args, **kwargs):
        _LOG.append((clock(), "s", _kind(frames)))
        return send(sock, frames, *args, **kwargs)

    def recv_frames(sock, *args, **kwargs):
        frames = recv(sock, *args, **kwargs)
        _LOG.append((clock(), "r", _kind(frames)))
        return frames

    # Modules imported already (cw/__init__ pulls in the client's) took the
    # originals by name; those imported later take the wrappers.
    for module in [transport, *(m for n, m in list(sys.modules.items()) if n.startswith("cw."))]:
        if getattr(module, "send_frames", None) is send:
            vars(module).update(send_frames=send_frames, recv_frames=recv_frames)
    _WHERE.append(os.path.join(out, f"{role}-{os.getpid()}.txt"))
    atexit.register(flush)


def flush() -> None:
    """Write what this process noted so far."""
    with open(_WHERE[0], "w") as f:
        f.writelines(f"{t:.7f} {d} {k}\n" for t, d, k in _LOG)


if os.environ.get("CW_TIMELINE_DIR"):
    _argv = " ".join(getattr(sys, "orig_argv", sys.argv))
    if "cw.master" in _argv:
        install("master", os.environ["CW_TIMELINE_DIR"])
    elif "--executor" in _argv:
        install("executor", os.environ["CW_TIMELINE_DIR"])
