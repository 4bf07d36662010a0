"""DICOM photographs in, RGB frames and study identifiers out. Runs in executors (score's Python tasks).

A file is DICOM when its bytes say so (the ``DICM`` magic after the 128-byte preamble), whatever
its name. Only photographs are scored: the Secondary Capture and Visible Light families (VL
Photographic, Dermoscopic Photography, endoscopic and microscopic images, their video forms).
Everything else becomes a reject with a reason, never a failed run:

- ``dicom_directory``: a ``DICOMDIR``, the index of a DICOM export (PS3.10 media): one row that
  says how many records it holds; the objects it names are files of the archive, each scored or
  rejected on its own;
- ``dicom_not_a_photograph``: CT, MR, ultrasound, RT, segmentations, SR, waveforms...;
- ``dicom_no_pixel_data``, ``dicom_monochrome`` (the models see colour), ``dicom_undecodable``
  (a transfer syntax no installed decoder reads, or broken pixel data), ``dicom_unreadable``
  (not parseable as DICOM), ``too_many_pixels`` (the decompression-bomb guard, per frame and for
  the whole object), ``over_memory_budget`` (the object would decode, or inflate, to more than
  ``limits.max_decoded_bytes``), ``too_many_frames`` (its frames at the model's size would take more
  than that budget).

The memory budget is judged from the header before any pixel is decoded: decoded bytes are frames x
rows x columns x samples x bytes per sample (a palette's lookup output counted at 16 bits), and a
multi-frame object's model-sized frames are frames x size x size x 3 x 4 bytes (as float32 for the
model). An object over either is one reject row, never part of its frames: a content is recorded
as done for a model version only when every frame was scored, and a reject says why the rest were
not (raising the budget rescores it, ``score._done``). A deflated object is inflated first by a
bounded inflater, whatever its File Meta group length says; samples of more than 8 bits are scaled
to 8 a frame at a time, so nothing larger than one frame is ever held at a higher precision.

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

import io
import logging
import warnings
import zlib

import numpy as np

from ..dataset.clinical import from_dicom
from .dicom_results import result_header
from .images import DECODE_TIMEOUT_S, ImageRejected, fit_array
from ..core.isolate import ChildFailed, in_child
from ..core.pathkey import digest

MAGIC_AT, MAGIC = 128, b"DICM"
DEFLATED = b"1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
VISIBLE_LIGHT = "1.2.840.10008.5.1.4.1.1.77.1."
# Visible-light classes that are not photographs of skin: ophthalmic (.5.x), whole slide (.6)
NOT_SKIN = ("1.2.840.10008.5.1.4.1.1.77.1.5.", "1.2.840.10008.5.1.4.1.1.77.1.6")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
FRAME_GUARD = 4  # a whole object may hold at most this many max_image_pixels of frames
MAX_DECODED_BYTES = 256 << 20  # limits.max_decoded_bytes: an object's decoded pixels, and its model-sized frames
IDENTIFIERS = ("study_uid", "series_uid", "sop_instance_uid", "modality", "patient_key")


DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (PS3.10)


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
    return digest(salt, str(patient_id).strip())


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
    if sop == DICOMDIR or "DirectoryRecordSequence" in ds:
        records = list(ds.get("DirectoryRecordSequence") or [])
        images = sum(1 for r in records if str(r.get("DirectoryRecordType", "")).strip() == "IMAGE")
        raise ImageRejected("dicom_directory", f"a DICOMDIR, the index of a DICOM export: {len(records)} records, "
                            f"{images} of them images, each scored as a file of the archive")
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


def decoded_bytes(ds, frames: int) -> int:
    """What pydicom's decode of every frame allocates, from the header: frames x rows x columns x
    samples x bytes per sample; for palette colour, the indices plus their 16-bit RGB lookup."""
    try:
        alloc = max(1, -(-int(ds.get("BitsAllocated") or 8) // 8))
        samples = max(1, int(ds.get("SamplesPerPixel") or 1))
    except (TypeError, ValueError):
        raise ImageRejected("dicom_undecodable", "bits allocated or samples per pixel invalid") from None
    pixels = frames * int(ds.Rows) * int(ds.Columns)
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        return pixels * alloc + pixels * 3 * 2
    return pixels * max(samples, 3) * alloc


def check_budget(ds, frames: int, max_bytes: int, size: int | None, max_frames: int | None) -> None:
    """``ImageRejected`` before any decode when the object would exceed the memory budget: its
    decoded pixels (``decoded_bytes``), or its frames at the model's ``size`` as float32, or (ingest:
    one image per metadata row) more frames than ``max_frames``."""
    if max_frames is not None and frames > max_frames:
        raise ImageRejected("dicom_multiframe", f"{frames} frames: a training record is one image per metadata row")
    need = decoded_bytes(ds, frames)
    if need > max_bytes:
        raise ImageRejected("over_memory_budget", f"{frames} frame(s) of {ds.Columns}x{ds.Rows} would decode to "
                            f"{need} bytes > limits.max_decoded_bytes={max_bytes}")
    if size and frames * size * size * 3 * 4 > max_bytes:
        raise ImageRejected("too_many_frames", f"{frames} frames at {size}x{size} would take "
                            f"{frames * size * size * 12} bytes > limits.max_decoded_bytes={max_bytes}")


def _to_rgb8(ds, arr: np.ndarray, fit=None) -> list[np.ndarray]:
    """Each frame as rows x columns x 3 uint8 (then ``fit``, when given), from what pydicom decoded:
    converted a frame at a time, so only one frame is ever held at a higher precision."""
    from pydicom.pixels import apply_color_lut
    palette = str(ds.PhotometricInterpretation) == "PALETTE COLOR"
    single = int(ds.get("NumberOfFrames") or 1) == 1
    if single and arr.ndim == (2 if palette else 3):
        arr = arr[None]
    if arr.ndim != (3 if palette else 4) or (not palette and arr.shape[-1] != 3):
        raise ImageRejected("dicom_undecodable", f"decoded to shape {arr.shape}, not frames of "
                            f"{'palette indices' if palette else 'RGB'}")
    out = []
    for frame in arr:
        if palette:
            frame = apply_color_lut(frame, ds)
            bits = 16 if frame.dtype.itemsize > 1 else 8  # lookup tables hold 8- or 16-bit entries
        else:
            bits = int(ds.get("BitsStored") or 8 * frame.dtype.itemsize)
        if frame.dtype != np.uint8 or bits != 8:
            wide = frame.astype(np.float32)  # one frame, scaled in place
            wide *= np.float32(255.0 / (2 ** min(max(bits, 1), 32) - 1))
            np.clip(wide, 0, 255, out=wide)
            frame = np.rint(wide, out=wide).astype(np.uint8)
            del wide
        out.append(frame if fit is None else fit(frame))
    return out


JPEG2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
JP2_SIGNATURE, JP2C = b"\x00\x00\x00\x0c\x6a\x50\x20\x20", b"\x6a\x70\x32\x63"


def _check_j2k_boxes(ds, frames: int) -> None:
    """A JPEG 2000 frame in a JP2 wrapper whose boxes before the codestream include one of length 0:
    pydicom 3.0.1 walks the boxes adding each length and never leaves that loop (found by
    ``benchmarks/fuzz_decode.py``). Walked here as pydicom walks them, and refused."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in JPEG2000:
        return
    from pydicom.encaps import generate_frames
    for frame in generate_frames(ds.PixelData, number_of_frames=frames):
        if not frame.startswith(JP2_SIGNATURE):
            continue
        offset = 12
        while offset < len(frame):
            length = int.from_bytes(frame[offset:offset + 4], "big")
            if frame[offset + 4:offset + 8] == JP2C:
                break
            if length == 0:
                raise ImageRejected("dicom_undecodable", "a JPEG 2000 box of length 0 before the codestream")
            offset += length


def _pixels(ds):
    """``ds.pixel_array``, with GDCM never in this process: the decoders that report errors as
    exceptions (pydicom's own, Pillow's) are tried first, in pydicom's order; GDCM, which can abort
    the process on a crafted object, last, in a forked child (``isolate.in_child``)."""
    from pydicom.pixels.decoders.base import get_decoder
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        plugins = get_decoder(syntax).available_plugins
    except Exception:  # noqa: BLE001 - native or unknown syntax: pydicom's own path decides
        plugins = ()
    if "gdcm" not in plugins:
        return ds.pixel_array
    for plugin in (p for p in plugins if p != "gdcm"):
        try:
            ds.pixel_array_options(decoding_plugin=plugin)
            return ds.pixel_array
        except Exception:  # noqa: BLE001 - the next decoder may read it
            continue
    ds.pixel_array_options(decoding_plugin="gdcm")
    try:
        return in_child(lambda: ds.pixel_array, DECODE_TIMEOUT_S)
    except ChildFailed as failed:
        raise ImageRejected("decode_timeout" if failed.reason == "decode_timeout" else "dicom_undecodable",
                            f"pixel data ({getattr(syntax, 'name', syntax)}): {failed.detail}") from None


def _syntax_and_start(data: bytes):
    """(transfer syntax UID, offset of the dataset after the File Meta and command groups), read
    exactly as pydicom reads them, so that a group length of 0 or a UID far into the meta group
    cannot hide a deflated object."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble
    fp = DicomBytesIO(bytes(data))
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    _read_command_set_elements(fp)
    return str(meta.get("TransferSyntaxUID") or ""), fp.tell()


def _check_inflated_size(data: bytes, limit: int) -> None:
    """A deflated object (the whole dataset zlib-compressed) is inflated in one piece by pydicom:
    inflate it here first, at most ``limit`` bytes, so that a small file cannot become gigabytes."""
    syntax, start = _syntax_and_start(data)
    if syntax != DEFLATED.decode():
        return
    inflater, rest, total = zlib.decompressobj(-zlib.MAX_WBITS), bytes(data[start:]), 0
    try:
        while rest and not inflater.eof:  # a MiB at a time, counted and dropped
            total += len(inflater.decompress(rest, 1 << 20))
            rest = inflater.unconsumed_tail
            if total + (0 if rest else len(inflater.flush())) > limit:
                raise ImageRejected("over_memory_budget", f"deflated data inflating past {limit} bytes "
                                    "(limits.max_decoded_bytes)")
    except zlib.error:
        raise ImageRejected("dicom_unreadable", "deflated data that does not inflate") from None


def read_frames(data: bytes, max_pixels: int, salt: str | None = None, max_bytes: int = MAX_DECODED_BYTES,
                size: int | None = None, mode: str = "squash",
                max_frames: int | None = None) -> tuple[list[np.ndarray], dict, dict, object]:
    """(RGB uint8 frames: full size, or ``size`` x ``size`` by ``images.fit_array`` when ``size`` is
    given; ``IDENTIFIERS``; the patient's age, sex and anatomic site for a model's metadata input
    (``clinical.from_dicom``: used, never stored); the header the result objects copy
    (``dicom_results.result_header``: kept in memory with the batch, never stored)) of a DICOM
    photograph; ``ImageRejected`` with a reason for anything else, whatever a crafted object makes the parser or a decoder raise.
    ``max_bytes``: the memory budget (``check_budget``); ``max_frames``: more is a reject before decoding."""
    # pydicom logs odd values as it meets them, and a value can be a birth date or a name: silenced
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd value: the reject says enough
            return _read_frames(data, max_pixels, salt, max_bytes, size, mode, max_frames)
    except ImageRejected:
        raise
    except MemoryError:
        raise ImageRejected("over_memory_budget", "the decoder ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - whatever a crafted object does, it is this file's reject
        raise ImageRejected("dicom_unreadable", f"not a readable DICOM object ({type(exc).__name__})") from None


def _read_frames(data: bytes, max_pixels: int, salt: str | None, max_bytes: int, size: int | None, mode: str,
                 max_frames: int | None) -> tuple[list[np.ndarray], dict, dict, object]:
    import pydicom
    _check_inflated_size(data, max_bytes)
    ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    ids = identifiers(ds, salt)
    frames = _check(ds, max_pixels)
    check_budget(ds, frames, max_bytes, size, max_frames)
    _check_j2k_boxes(ds, frames)
    try:
        arr = _pixels(ds)
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this file's reject, never the task's
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "no transfer syntax")
        raise ImageRejected("dicom_undecodable", f"pixel data ({name}) cannot be decoded: "
                            f"{type(exc).__name__}") from None
    rgb = _to_rgb8(ds, arr, None if size is None else (lambda f: fit_array(f, size, mode)))
    del arr
    if len(rgb) != frames:
        raise ImageRejected("dicom_undecodable", f"{len(rgb)} frames decoded, {frames} declared")
    return rgb, ids, from_dicom(ds), result_header(ds)
