"""Any file's bytes to model-sized images. Runs in executors (ingest, score and explain tasks).

A JPEG or PNG is one image; a DICOM photograph (``dicom``) one per frame, with its study
identifiers; anything else one reject with a reason. Score and explain take every frame; ingest
takes one image per metadata row (``decode_single``).
"""
from __future__ import annotations

from .dicom import IDENTIFIERS, is_dicom, read_frames
from .images import ImageRejected, decode_each, fit_array


def decode_frames(contents, size: int, mode: str, max_pixels: int, salt: str | None, reasons: list,
                  details: list) -> list[list[tuple]]:
    """Each file's images as ``(frame, array or None, reason, detail, identifiers)``: one for a
    JPEG or PNG (frame None), one per frame of a DICOM photograph (frames 1..n, with its study
    identifiers), one reject for anything else. Rows that already have a reason keep it."""
    none = dict.fromkeys(IDENTIFIERS)
    out = []
    for data, reason, detail in zip(contents, reasons, details):
        if reason is None and is_dicom(data):
            try:
                frames, ids = read_frames(data, max_pixels, salt)
                out.append([(k + 1, fit_array(f, size, mode), None, None, ids) for k, f in enumerate(frames)])
            except ImageRejected as rej:
                out.append([(None, None, rej.code, rej.detail, none)])
            continue
        arrays, r, d = decode_each([data], size, mode, max_pixels, [reason], [detail])
        out.append([(None, arrays[0], r[0], d[0], none)])
    return out


def decode_images(contents, size: int, mode: str, max_pixels: int, salt: str | None, reasons: list,
                  details: list) -> list[tuple]:
    """``decode_frames`` as one list, a row per image: ``(file index, frame, array or None, reason,
    detail, identifiers)``."""
    return [(i, *image) for i, per_file in enumerate(decode_frames(contents, size, mode, max_pixels, salt, reasons,
                                                                   details)) for image in per_file]


def decode_single(contents, size: int, mode: str, max_pixels: int, reasons: list, details: list):
    """One image per file, for training records (one label per metadata row): (arrays or None,
    reasons, details). A DICOM object of several frames is a reject: which frame the label is for
    is not known."""
    arrays, out_reasons, out_details = [], [], []
    for images in decode_frames(contents, size, mode, max_pixels, None, reasons, details):
        if len(images) > 1:
            arrays.append(None)
            out_reasons.append("dicom_multiframe")
            out_details.append(f"{len(images)} frames: a training record is one image per metadata row")
            continue
        _, array, reason, detail, _ = images[0]
        arrays.append(array)
        out_reasons.append(reason)
        out_details.append(detail)
    return arrays, out_reasons, out_details
