"""Hostile objects, built here from scratch: each one small on disk and large, slow or misleading
to whatever reads it naively. Used by the tests (``test_hostile.py``), the poisoned soak
(``benchmarks/soak.py --poison``), the memory table (``benchmarks/hostile_memory.py``) and the
fuzzing harness (``benchmarks/fuzz_decode.py``) as seeds."""
from __future__ import annotations

import io
import zlib

import numpy as np

VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"


def _dataset(rows: int, cols: int, frames: int, bits: int, syntax: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid
    meta = FileMetaDataset()
    instance = generate_uid()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID = \
        VL_PHOTOGRAPHIC, instance, syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_PHOTOGRAPHIC, instance
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "XC"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation, ds.PlanarConfiguration = 0, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _save(ds) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def many_frames(frames: int = 10_000) -> bytes:
    """A VL Photographic object of ``frames`` 1x1 RGB frames (30 KB for 10,000)."""
    from pydicom.uid import ExplicitVRLittleEndian
    ds = _dataset(1, 1, frames, 8, ExplicitVRLittleEndian)
    ds.PixelData = np.random.default_rng(0).integers(0, 256, frames * 3, dtype=np.uint8).tobytes()
    return _save(ds)


def sixteen_bit_rle(rows: int = 1000, cols: int = 1000, frames: int = 1) -> bytes:
    """A 16-bit RGB object, RLE Lossless (a smooth ramp: small on disk)."""
    from pydicom.uid import RLELossless
    ds = _dataset(rows, cols, frames, 16, RLELossless)
    ramp = (np.arange(rows * cols, dtype=np.uint64) * 65535 // max(1, rows * cols - 1)).astype(np.uint16)
    arr = np.repeat(ramp.reshape(rows, cols, 1), 3, axis=2)
    if frames > 1:
        arr = np.stack([arr] * frames)
    ds.PhotometricInterpretation = "RGB"
    ds.compress(RLELossless, arr, encoding_plugin="pydicom")
    return _save(ds)


def _deflated(body_zeros: int, version_bytes: int = 2) -> tuple[bytes, int]:
    """(a Deflated Explicit VR Little Endian object whose dataset is followed by ``body_zeros``
    zero bytes once inflated, the offset where its deflated stream starts). ``version_bytes``: the
    length of the File Meta Information Version, which pushes the transfer syntax UID that far."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    ds = _dataset(8, 8, 1, 8, DeflatedExplicitVRLittleEndian)
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01" * (version_bytes // 2)
    ds.PixelData = bytes(8 * 8 * 3)
    data = _save(ds)
    fp = DicomBytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    start = fp.tell()
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = zlib.decompress(data[start:], -zlib.MAX_WBITS)
    chunk, tail = bytes(16 << 20), []
    tail.append(packer.compress(body))
    for _ in range(body_zeros // len(chunk)):
        tail.append(packer.compress(chunk))
    tail.append(packer.compress(bytes(body_zeros % len(chunk))))
    tail.append(packer.flush())
    return data[:start] + b"".join(tail), start


def deflate_zero_group_length(body_zeros: int = 300 << 20) -> bytes:
    """A deflated object whose File Meta group length says 0 (pydicom reads the group anyway)."""
    data, _ = _deflated(body_zeros)
    assert data[132:136] == b"\x02\x00\x00\x00" and data[136:138] == b"UL"
    return data[:140] + (0).to_bytes(4, "little") + data[144:]


def deflate_uid_past_4k(body_zeros: int = 300 << 20) -> bytes:
    """A deflated object whose transfer syntax UID sits past the first 4 KB of the file."""
    data, start = _deflated(body_zeros, version_bytes=6000)
    assert data.find(b"1.2.840.10008.1.2.1.99") > 4096
    return data


def sparse_file(path, size: int = 1 << 40) -> None:
    """A file of ``size`` bytes apparent size and none on disk."""
    with open(path, "wb") as fh:
        fh.truncate(size)
