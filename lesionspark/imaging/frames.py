"""Any file's bytes to model-sized images. Runs in executors (ingest, score and explain tasks).

A JPEG or PNG is one image; a DICOM photograph (``dicom``) one per frame, with its study
identifiers; anything else one reject with a reason. Score and explain take every frame; ingest
takes one image per metadata row (``decode_single``).
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from .dicom import IDENTIFIERS, MAX_DECODED_BYTES, is_dicom, read_frames
from . import images
from .images import ImageRejected, decode_each

NO_IDS = dict.fromkeys(IDENTIFIERS)
# images.DECODE_TIMEOUT_S is enforced here by SIGALRM where the decode runs in a process's main
# thread (Spark's Python workers), so it interrupts Python code; a native decoder that might loop or
# crash runs in a child with the same deadline (isolate.in_child).


class DecodeTimeout(BaseException):
    """Raised by ``deadline`` (a BaseException: a library's ``except Exception`` cannot swallow it)."""


@contextmanager
def deadline(seconds: float):
    """``DecodeTimeout`` in the block after ``seconds``; a no-op outside the main thread."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise DecodeTimeout()

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Image(NamedTuple):
    """One image of a file: ``frame`` None for a JPEG or PNG, 1..n for a DICOM object's frames;
    ``array`` None with a ``reason`` for a reject; ``clinical`` what the file says of the patient
    (DICOM: age, sex, anatomic site) for a model's metadata input; ``source`` a DICOM object's header
    for the result objects (``dicom_results.result_header``), None for anything else."""
    file: int
    frame: int | None
    array: np.ndarray | None
    reason: str | None
    detail: str | None
    ids: dict
    clinical: dict
    source: object = None


def decode_frames(contents, size: int, mode: str, max_pixels: int, salt: str | None, reasons: list,
                  details: list, max_bytes: int = MAX_DECODED_BYTES, max_frames: int | None = None,
                  first: int = 0) -> list[list[Image]]:
    """Each file's images: one for a JPEG or PNG, one per frame of a DICOM photograph (with its
    study identifiers), one reject for anything else. Rows that already have a reason keep it.
    ``max_bytes``: an object's memory budget (``dicom.check_budget``); ``max_frames``: a DICOM object
    of more frames is a reject before it is decoded; ``first``: the ``file`` number of ``contents[0]``."""
    out = []
    for i, (data, reason, detail) in enumerate(zip(contents, reasons, details), start=first):
        try:
            with deadline(images.DECODE_TIMEOUT_S if reason is None else 0):
                out.append(_decode_one(i, data, reason, detail, size, mode, max_pixels, salt, max_bytes, max_frames))
        except DecodeTimeout:
            out.append([Image(i, None, None, "decode_timeout", f"decoding took over {images.DECODE_TIMEOUT_S:g} s",
                              NO_IDS, {})])
    return out


def _decode_one(i, data, reason, detail, size, mode, max_pixels, salt, max_bytes, max_frames) -> list[Image]:
    if reason is None and is_dicom(data):
        try:
            frames, ids, clinical, header = read_frames(data, max_pixels, salt, max_bytes, size, mode, max_frames)
            return [Image(i, k + 1, f, None, None, ids, clinical, header) for k, f in enumerate(frames)]
        except ImageRejected as rej:
            return [Image(i, None, None, rej.code, rej.detail, NO_IDS, {})]
    arrays, r, d = decode_each([data], size, mode, max_pixels, [reason], [detail])
    return [Image(i, None, arrays[0], r[0], d[0], NO_IDS, {})]


def decode_single(contents, size: int, mode: str, max_pixels: int, reasons: list, details: list,
                  max_bytes: int = MAX_DECODED_BYTES):
    """One image per file, for training records (one label per metadata row): (arrays or None,
    reasons, details). A DICOM object of several frames is a reject (``dicom_multiframe``), judged
    from its header before any frame is decoded: which frame the label is for is not known."""
    arrays, out_reasons, out_details = [], [], []
    for per_file in decode_frames(contents, size, mode, max_pixels, None, reasons, details, max_bytes, max_frames=1):
        arrays.append(per_file[0].array)
        out_reasons.append(per_file[0].reason)
        out_details.append(per_file[0].detail)
    return arrays, out_reasons, out_details


def image_chunks(n_files: int, fetch, decode, flush_at: int):
    """Files read and decoded one at a time, their images yielded in chunks of at least ``flush_at``
    (the rest at the end): a worker holds one file's bytes and the model-sized images of one chunk,
    whatever the batch's size. ``fetch(i)``: (bytes or None, reason, detail) of file ``i``;
    ``decode(i, data, reason, detail)``: its ``Image`` list."""
    pending: list[Image] = []
    for i in range(n_files):
        data, reason, detail = fetch(i)
        pending += decode(i, data, reason, detail)
        del data
        if len(pending) >= flush_at:
            yield pending
            pending = []
    if pending:
        yield pending
