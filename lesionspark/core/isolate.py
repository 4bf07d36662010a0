"""A native decoder run in a forked child, so that its crash is one file's reject, not the worker's.

GDCM (python-gdcm, the only decoder here for JPEG lossless and JPEG-LS, and pydicom's first choice
for JPEG 2000) throws C++ exceptions that nothing catches on some crafted objects: the process
aborts (``terminate called after throwing an instance of 'std::string'``; a 5 KB JPEG 2000 object
found by ``benchmarks/fuzz_decode.py``). In a Spark Python worker that fails the task, four times,
and the run. ``in_child`` runs a function returning a numpy array in a child made by ``fork`` (it
inherits the parsed object: nothing is pickled on the way in), takes the array back through a
pipe, and turns a child that dies, or runs past its deadline, into ``ChildFailed``. Runs in
executors (score's, ingest's and explain's Python tasks), wherever a DICOM object is decoded.
"""
from __future__ import annotations

import json
import os
import select
import signal
import time

import numpy as np


class ChildFailed(Exception):
    """The child crashed, raised, or ran past its deadline: ``reason`` says which."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _child(fn, w: int) -> None:
    try:
        arr = np.ascontiguousarray(fn())
        head = json.dumps({"dtype": arr.dtype.str, "shape": arr.shape}).encode()
        body = memoryview(arr).cast("B")
    except BaseException as exc:  # noqa: BLE001 - said to the parent, whatever it is
        head, body = json.dumps({"error": f"{type(exc).__name__}: {str(exc)[:300]}"}).encode(), memoryview(b"")
    with os.fdopen(w, "wb") as out:
        out.write(len(head).to_bytes(8, "little") + head)
        out.write(body)


def _read_all(r: int, deadline: float) -> bytes:
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([r], [], [], left)[0]:
            raise ChildFailed("decode_timeout", "the decoder was still running at its deadline")
        chunk = os.read(r, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def in_child(fn, timeout_s: float) -> np.ndarray:
    """``fn()`` (a numpy array) computed in a forked child; ``ChildFailed`` if the child dies
    (``decoder_crashed``), raises (``decoder_error``) or runs past ``timeout_s`` (``decode_timeout``)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        try:
            os.close(r)
            for fatal in (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL):
                signal.signal(fatal, signal.SIG_DFL)  # die plainly: no handler of the parent's runs here
            _child(fn, w)
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = _read_all(r, time.monotonic() + timeout_s)
    finally:
        os.close(r)
        status = _reap(pid)
    if os.WIFSIGNALED(status) and len(data) < 8:
        raise ChildFailed("decoder_crashed", f"the decoder crashed ({signal.Signals(os.WTERMSIG(status)).name})")
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    head = json.loads(data[8:8 + size] or b'{"error": "no result"}')
    if "error" in head:
        raise ChildFailed("decoder_error", head["error"])
    return np.frombuffer(data, dtype=np.dtype(head["dtype"]), offset=8 + size).reshape(head["shape"]).copy()


def _reap(pid: int) -> int:
    """The child's exit status, killing it first if it still runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    return status
