"""DICOM photographs in, RGB frames and study identifiers out. Runs in executors (score's Python tasks).

A file is DICOM when its bytes say so (the ``DICM`` magic after the 128-byte preamble), whatever
its name. Only photographs are scored: the Secondary Capture and Visible Light families (VL
Photographic, Dermoscopic Photography, endoscopic and microscopic images, their video forms).
Everything else becomes a reject with a reason, never a failed run:

- ``dicom_not_a_photograph``: CT, MR, ultrasound, RT, segmentations, SR, waveforms...;
- ``dicom_no_pixel_data``, ``dicom_monochrome`` (the models see colour), ``dicom_undecodable``
  (a transfer syntax no installed decoder reads, or broken pixel data), ``dicom_unreadable``
  (not parseable as DICOM), ``too_many_pixels`` (the decompression-bomb guard, per frame and for
  the whole object).

Pixel data is decoded by pydicom with python-gdcm (JPEG baseline, extended and lossless, JPEG-LS,
JPEG 2000) and pydicom's own RLE and deflate readers; YBR_FULL, YBR_FULL_422, YBR_ICT and YBR_RCT
come back as RGB, palette colour is applied through its lookup table, and samples of more than 8
bits are scaled to 8. Every frame of a multi-frame object is its own image (``frame`` 1..n).

Identity: only the UIDs, the modality and a salted hash of the patient ID leave this module for
the tables, and the age, sex and anatomic site for a model's metadata input (stored, if at all, as
the categories the model saw: an age as its decade). The
patient's name, birth date and every other attribute stay in the parsed object, which is dropped
with the batch; nothing here logs. Without a salt (``score.path_salt``) there is no patient key:
an unsalted hash of a short hospital ID is reversed by trying every ID.
"""
from __future__ import annotations

import hashlib
import io
import logging
import warnings
import zlib

import numpy as np

from .clinical import from_dicom
from .images import ImageRejected

MAGIC_AT, MAGIC = 128, b"DICM"
DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VISIBLE_LIGHT = "1.2.840.10008.5.1.4.1.1.77.1."
# Visible-light classes that are not photographs of skin: ophthalmic (.5.x), whole slide (.6)
NOT_SKIN = ("1.2.840.10008.5.1.4.1.1.77.1.5.", "1.2.840.10008.5.1.4.1.1.77.1.6")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
FRAME_GUARD = 4  # a whole object may hold at most this many max_image_pixels of frames
IDENTIFIERS = ("study_uid", "series_uid", "sop_instance_uid", "modality", "patient_key")


def is_dicom(data) -> bool:
    return data is not None and len(data) >= MAGIC_AT + 4 and bytes(data[MAGIC_AT:MAGIC_AT + 4]) == MAGIC


def is_photograph(sop_class: str) -> bool:
    if sop_class == SECONDARY_CAPTURE or sop_class.startswith(SECONDARY_CAPTURE + "."):
        return True
    return sop_class.startswith(VISIBLE_LIGHT) and not sop_class.startswith(NOT_SKIN)


def patient_key(patient_id, salt: str | None) -> str | None:
    """SHA-256 of salt + patient ID, or None without a salt or an ID."""
    if not salt or patient_id is None or not str(patient_id).strip():
        return None
    return hashlib.sha256((salt + str(patient_id).strip()).encode("utf-8")).hexdigest()


def identifiers(ds, salt: str | None) -> dict:
    """What links a result back to the hospital's systems, and nothing that names the patient."""
    def text(keyword):
        value = ds.get(keyword)
        return None if value is None or str(value) == "" else str(value)
    return {"study_uid": text("StudyInstanceUID"), "series_uid": text("SeriesInstanceUID"),
            "sop_instance_uid": text("SOPInstanceUID"), "modality": text("Modality"),
            "patient_key": patient_key(ds.get("PatientID"), salt)}


def _sop_class(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    value = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return str(value or "")


def _check(ds, max_pixels: int) -> int:
    """The number of frames of a scoreable photograph; ImageRejected otherwise."""
    sop = _sop_class(ds)
    if not is_photograph(sop):
        name = getattr(ds.get("SOPClassUID"), "name", None) or sop or "no SOP class"
        raise ImageRejected("dicom_not_a_photograph", f"{name} (modality {ds.get('Modality') or 'none'}) "
                            "is not a photograph")
    if "PixelData" not in ds:
        raise ImageRejected("dicom_no_pixel_data", "the object holds no pixel data")
    colour = str(ds.get("PhotometricInterpretation", ""))
    if colour not in COLOUR:
        raise ImageRejected("dicom_monochrome", f"photometric interpretation {colour or 'missing'}: "
                            "the model needs a colour image")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        pixels = int(ds.Rows) * int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise ImageRejected("dicom_undecodable", "rows, columns or number of frames missing or invalid") from None
    if pixels > max_pixels or pixels * frames > FRAME_GUARD * max_pixels or frames < 1 or pixels < 1:
        raise ImageRejected("too_many_pixels", f"{frames} frame(s) of {ds.Columns}x{ds.Rows} exceed "
                            f"max_image_pixels={max_pixels} (decompression-bomb guard)")
    return frames


def _to_rgb8(ds, arr: np.ndarray) -> np.ndarray:
    """Frames x rows x columns x 3, uint8, from what pydicom decoded."""
    from pydicom.pixels import apply_color_lut
    if str(ds.PhotometricInterpretation) == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = 16 if arr.dtype.itemsize > 1 else 8  # lookup tables hold 8- or 16-bit entries
    else:
        bits = int(ds.get("BitsStored") or 8 * arr.dtype.itemsize)
    if arr.ndim == 3 and arr.shape[-1] == 3 and int(ds.get("NumberOfFrames") or 1) == 1:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ImageRejected("dicom_undecodable", f"decoded to shape {arr.shape}, not frames of RGB")
    if arr.dtype != np.uint8 or bits != 8:
        arr = np.clip(arr.astype(np.float64) * (255.0 / (2 ** bits - 1)), 0, 255).round().astype(np.uint8)
    return arr


def _check_inflated_size(data: bytes, limit: int) -> None:
    """A deflated object (the whole dataset zlib-compressed) is inflated in one piece by pydicom:
    inflate it here first, at most ``limit`` bytes, so that a small file cannot become gigabytes."""
    head = bytes(data[:4096])
    if DEFLATED not in head:
        return
    if head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        raise ImageRejected("dicom_unreadable", "a deflated object without a file meta group length")
    start = 144 + int.from_bytes(head[140:144], "little")
    if DEFLATED not in head[144:start]:
        return  # the UID was elsewhere (a referenced syntax, say): not a deflated object
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(bytes(data[start:]), limit)
    except zlib.error:
        raise ImageRejected("dicom_unreadable", "deflated data that does not inflate") from None
    if inflater.unconsumed_tail:
        raise ImageRejected("too_many_pixels", f"deflated data inflating past {limit} bytes "
                            "(decompression-bomb guard)")


def read_frames(data: bytes, max_pixels: int, salt: str | None = None) -> tuple[list[np.ndarray], dict, dict]:
    """(full-size RGB uint8 frames, ``IDENTIFIERS``, the patient's age, sex and anatomic site for a
    model's metadata input (``clinical.from_dicom``: used, never stored)) of a DICOM photograph;
    ``ImageRejected`` with a reason for anything else, whatever a crafted object makes the parser or
    a decoder raise."""
    # pydicom logs odd values as it meets them, and a value can be a birth date or a name: silenced
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd value: the reject says enough
            return _read_frames(data, max_pixels, salt)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a crafted object does, it is this file's reject
        raise ImageRejected("dicom_unreadable", f"not a readable DICOM object ({type(exc).__name__})") from None


def _read_frames(data: bytes, max_pixels: int, salt: str | None) -> tuple[list[np.ndarray], dict, dict]:
    import pydicom
    _check_inflated_size(data, FRAME_GUARD * max_pixels * 3)  # as many bytes as the largest 8-bit object
    ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    ids = identifiers(ds, salt)
    frames = _check(ds, max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's reject, never the task's
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "no transfer syntax")
        raise ImageRejected("dicom_undecodable", f"pixel data ({name}) cannot be decoded: "
                            f"{type(exc).__name__}") from None
    rgb = _to_rgb8(ds, arr)
    if len(rgb) != frames:
        raise ImageRejected("dicom_undecodable", f"{len(rgb)} frames decoded, {frames} declared")
    return list(rgb), ids, from_dicom(ds)
