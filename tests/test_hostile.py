"""Hostile objects end as one reject row each, judged before any large allocation: the memory
budget per object (``limits.max_decoded_bytes``), the bounded inflater, frame-at-a-time sample
conversion, sizes judged before any read, the read deadline. No Spark."""
import hashlib
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostile  # noqa: E402
from lesionspark.imaging.dicom import read_frames  # noqa: E402
from lesionspark.imaging.frames import decode_frames, decode_single, image_chunks  # noqa: E402
from lesionspark.imaging.images import ImageRejected  # noqa: E402
from lesionspark.store.listing import Reader  # noqa: E402

pytest.importorskip("pydicom")
MAX_PIXELS = 40_000_000


def _peak(fn):
    """(result or ImageRejected, peak bytes numpy and Python allocated while ``fn`` ran)."""
    tracemalloc.start()
    try:
        try:
            out = fn()
        except ImageRejected as rej:
            out = rej
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_ten_thousand_tiny_frames_are_one_reject_before_any_frame_is_resized():
    data = hostile.many_frames(10_000)
    assert len(data) < 40_000
    out, peak = _peak(lambda: read_frames(data, MAX_PIXELS, size=64))
    assert isinstance(out, ImageRejected) and out.code == "too_many_frames", out
    assert peak < 5 << 20  # nothing resized: 10,000 frames at 64 px would be 491 MB as float32
    # within the budget the frames are scored, each its own image
    assert len(read_frames(hostile.many_frames(50), MAX_PIXELS, size=64)[0]) == 50


def test_ingest_rejects_a_multiframe_object_from_its_header():
    out, peak = _peak(lambda: decode_single([hostile.many_frames(10_000)], 64, "squash", MAX_PIXELS, [None], [None]))
    assert out[1] == ["dicom_multiframe"] and peak < 5 << 20


@pytest.mark.parametrize("build", [hostile.deflate_zero_group_length, hostile.deflate_uid_past_4k])
def test_a_deflated_object_is_inflated_by_a_bounded_inflater_whatever_its_meta_says(build):
    data = build(300 << 20)
    assert len(data) < 400_000
    out, peak = _peak(lambda: read_frames(data, MAX_PIXELS, size=64))
    assert isinstance(out, ImageRejected) and out.code == "over_memory_budget", out
    assert peak < 16 << 20  # counted a MiB at a time, never held


def test_an_object_over_the_decoded_budget_is_refused_before_decoding():
    data = hostile.sixteen_bit_rle(1000, 1000)  # 6 MB as decoded 16-bit RGB
    out, peak = _peak(lambda: read_frames(data, MAX_PIXELS, max_bytes=4 << 20, size=64))
    assert isinstance(out, ImageRejected) and out.code == "over_memory_budget", out
    assert peak < 2 << 20


def test_sixteen_bit_samples_are_scaled_a_frame_at_a_time_in_single_precision():
    data = hostile.sixteen_bit_rle(1000, 1000, frames=3)  # 18 MB decoded
    out, peak = _peak(lambda: read_frames(data, MAX_PIXELS, size=64))
    frames = out[0]
    assert len(frames) == 3 and frames[0].dtype == np.uint8 and frames[0].shape == (64, 64, 3)
    assert frames[0][0, 0, 0] <= 5 and frames[0][-1, -1, 0] >= 250  # the ramp's ends, scaled to 8 bits
    decoded = 3 * 1000 * 1000 * 3 * 2
    # the decoder's own buffers plus one frame as float32; float64 of all frames alone would be 72 MB
    assert peak < decoded + 3 * 12_000_000, peak


def test_a_sparse_file_over_the_limit_is_rejected_from_its_size_unread(tmp_path):
    hostile.sparse_file(tmp_path / "huge.jpg", 1 << 40)
    (tmp_path / "ok.jpg").write_bytes(b"x" * 10)
    reader = Reader([str(tmp_path)])
    paths = [f"file:{tmp_path}/huge.jpg", f"file:{tmp_path}/ok.jpg"]
    # listed small (a file that grew after the listing): judged again by lstat before any read
    contents, shas, reasons, details = reader.fetch(paths, [1, 10], 1000, "archive.max_file_bytes")
    assert reasons == ["file_too_large", None] and shas[0] is None and contents[0] is None
    assert details[0] == f"{1 << 40} bytes > archive.max_file_bytes=1000"
    assert shas[1] == hashlib.sha256(b"x" * 10).hexdigest()


def test_a_read_past_its_deadline_is_a_reject_without_a_hash(tmp_path):
    (tmp_path / "slow.jpg").write_bytes(os.urandom(3 * (8 << 20)))
    reader = Reader([str(tmp_path)], read_timeout_s=0.0)  # every chunk is late
    _, shas, reasons, details = reader.fetch([f"file:{tmp_path}/slow.jpg"], [3 * (8 << 20)], 1 << 30, "k")
    assert reasons == ["read_timeout"] and shas == [None] and "after 0 s" in details[0]


def test_files_are_read_one_at_a_time_and_their_images_flushed_in_chunks():
    fetched = []

    def fetch(i):
        fetched.append(i)
        return f"bytes{i}", None, None

    chunks = image_chunks(5, fetch, lambda i, data, r, d: [(i, data)] * (3 if i == 1 else 1), flush_at=2)
    first = next(chunks)
    assert first == [(0, "bytes0"), (1, "bytes1"), (1, "bytes1"), (1, "bytes1")] and fetched == [0, 1]
    assert list(chunks) == [[(2, "bytes2"), (3, "bytes3")], [(4, "bytes4")]] and fetched == [0, 1, 2, 3, 4]


FUZZ = Path(__file__).parent / "data" / "fuzz"


def test_fuzz_finding_a_jpeg2000_box_of_length_zero_is_a_reject_not_a_hang():
    """benchmarks/fuzz_decode.py found it: pydicom 3.0.1 loops forever over JP2 boxes when one
    before the codestream has length 0 (27 KB, a mutation of pydicom's GDCMJ2K_TextGBR.dcm)."""
    start = time.monotonic()
    with pytest.raises(ImageRejected) as rej:
        read_frames((FUZZ / "j2k-box-length-0.dcm").read_bytes(), MAX_PIXELS, size=32)
    assert rej.value.code == "dicom_undecodable" and "length 0" in rej.value.detail
    assert time.monotonic() - start < 10


def test_the_decode_deadline_turns_a_parser_loop_into_a_reject(monkeypatch):
    """The safety net under the specific checks: with the box check taken away, the same object is
    stopped by the per-file deadline (SIGALRM in the worker's main thread)."""
    from lesionspark.imaging import dicom
    from lesionspark.imaging import frames
    from lesionspark.imaging import images
    monkeypatch.setattr(dicom, "_check_j2k_boxes", lambda ds, n: None)
    monkeypatch.setattr(images, "DECODE_TIMEOUT_S", 1.0)
    data = (FUZZ / "j2k-box-length-0.dcm").read_bytes()
    out = frames.decode_frames([data, hostile.many_frames(2)], 32, "squash", MAX_PIXELS, None, [None] * 2, [None] * 2)
    assert out[0][0].reason == "decode_timeout" and out[0][0].array is None
    assert [im.frame for im in out[1]] == [1, 2]  # the next file decodes as usual: the alarm was cleared


def test_fuzz_finding_a_decoder_that_aborts_the_process_is_one_reject():
    """benchmarks/fuzz_decode.py found it: on this 5 KB JPEG 2000 object GDCM throws a C++
    exception nothing catches, and the process aborts (in a Spark worker: the task, then the run).
    GDCM now runs in a forked child; the parent gets a reject and goes on."""
    out = decode_frames([(FUZZ / "j2k-gdcm-abort.dcm").read_bytes(), hostile.many_frames(1)], 32, "squash",
                        MAX_PIXELS, None, [None] * 2, [None] * 2)
    assert out[0][0].reason == "dicom_undecodable" and "crashed (SIGABRT)" in out[0][0].detail
    assert out[1][0].array is not None  # this process is alive and decodes the next file


def test_a_child_that_raises_or_outlives_its_deadline_is_a_failure_with_a_reason():
    from lesionspark.core.isolate import ChildFailed, in_child
    assert in_child(lambda: np.arange(6, dtype=np.uint16).reshape(2, 3), 10).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ChildFailed) as failed:
        in_child(lambda: 1 / 0, 10)
    assert failed.value.reason == "decoder_error" and "ZeroDivisionError" in failed.value.detail
    with pytest.raises(ChildFailed) as failed:
        in_child(lambda: time.sleep(30), 0.5)
    assert failed.value.reason == "decode_timeout"
