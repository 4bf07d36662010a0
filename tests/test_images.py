"""decode_resize on genuine JPEGs and on every kind of awkward input, without Spark."""
import io

import numpy as np
import pytest
from PIL import Image

from lesionspark.imaging.images import ImageRejected, decode_resize


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_bytes(genuine_dir):
    return [p.read_bytes() for p in sorted((genuine_dir / "images").glob("*.jpg"))[:8]]


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_genuine_jpegs_decode_to_square_rgb(real_bytes, size):
    for data in real_bytes:
        arr = decode_resize(data, size)
        assert arr.shape == (size, size, 3) and arr.dtype == np.uint8
        assert 20 < arr.mean() < 250  # a real picture, not a blank


def decode_resize_naive(data: bytes, size: int) -> np.ndarray:
    """Full decode, then a bicubic resize: what the draft-mode decoder must stay close to."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.uint8)


def test_draft_decodes_at_reduced_scale_and_matches_full_decode(real_bytes):
    img = Image.open(io.BytesIO(real_bytes[0]))
    assert img.size == (600, 450)
    img.draft("RGB", (128, 128))
    assert img.size == (300, 225)  # libjpeg scaled by 1/2 in the DCT domain: not fully decoded
    fast = decode_resize(real_bytes[0], 128).astype(float)
    full = decode_resize(real_bytes[0], 128, use_draft=False).astype(float)
    naive = decode_resize_naive(real_bytes[0], 128).astype(float)
    assert np.abs(fast - full).mean() < 4
    assert np.abs(fast - naive).mean() < 4


@pytest.mark.parametrize("data,code", [
    (b"", "empty_file"),
    (b"lesion_id,image_id\nthis is text", "not_an_image"),
])
def test_rejects_empty_and_non_images(data, code):
    with pytest.raises(ImageRejected) as exc:
        decode_resize(data, 64)
    assert exc.value.code == code


def test_truncated_jpeg_is_rejected(real_bytes):
    with pytest.raises(ImageRejected) as exc:
        decode_resize(real_bytes[0][: len(real_bytes[0]) // 2], 64)
    assert exc.value.code == "truncated_or_corrupt"


def test_unsupported_format_is_rejected():
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, "GIF")
    with pytest.raises(ImageRejected) as exc:
        decode_resize(buf.getvalue(), 16)
    assert exc.value.code == "unsupported_format"


def test_decompression_bomb_guard_reads_header_only():
    data = _jpeg(Image.new("RGB", (3000, 2000), (200, 150, 120)))
    with pytest.raises(ImageRejected) as exc:
        decode_resize(data, 64, max_pixels=5_000_000)
    assert exc.value.code == "too_many_pixels" and "3000x2000" in exc.value.detail
    assert decode_resize(data, 64, max_pixels=6_000_000).shape == (64, 64, 3)


def test_grayscale_cmyk_png_in_jpg_and_alpha_become_rgb():
    gray = decode_resize(_jpeg(Image.new("L", (60, 40), 128)), 16)
    assert gray.shape == (16, 16, 3) and np.all(np.abs(gray.astype(int) - 128) <= 2)
    cmyk = decode_resize(_jpeg(Image.new("RGB", (60, 40), (200, 40, 40)).convert("CMYK")), 16)
    assert cmyk.shape == (16, 16, 3) and cmyk[..., 0].mean() > 150 and cmyk[..., 1].mean() < 90
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), (10, 200, 30)).save(buf, "PNG")  # would be named .jpg on disk
    png = decode_resize(buf.getvalue(), 16)
    assert np.all(png == [10, 200, 30])
    buf = io.BytesIO()
    Image.new("RGBA", (50, 50), (0, 0, 0, 0)).save(buf, "PNG")
    assert np.all(decode_resize(buf.getvalue(), 8) == 255)  # transparent -> white, not black


def test_exif_orientation_is_applied():
    # Stored landscape: left half red, right half blue. Orientation 6 = display rotated 90 deg CW,
    # so the left (red) half ends up on top.
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    arr = decode_resize(_jpeg(img, exif=exif.tobytes()), 32)
    assert arr[:12, :, 0].mean() > 200 and arr[:12, :, 2].mean() < 60
    assert arr[-12:, :, 2].mean() > 200 and arr[-12:, :, 0].mean() < 60


def test_crop_mode_takes_the_centre_square():
    img = Image.new("RGB", (90, 30), (0, 255, 0))
    img.paste((255, 0, 0), (30, 0, 60, 30))  # red centre square
    assert np.all(decode_resize(_jpeg(img), 8, mode="crop")[2:6, 2:6, 0] > 200)
    squashed = decode_resize(_jpeg(img), 9, mode="squash")
    assert squashed[4, 0, 1] > 200 and squashed[4, 4, 0] > 200  # green sides kept
    with pytest.raises(ValueError):
        decode_resize(_jpeg(img), 8, mode="stretch")


def test_a_decompression_bomb_is_too_many_pixels_not_corrupt():
    """A 300-megapixel JPEG (its header patched to 20000x15000): PIL refuses it at open."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 80, 60)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (15000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    for limit in (40_000_000, 10**12):  # ours first, and PIL's own guard when ours is set above it
        with pytest.raises(ImageRejected) as info:
            decode_resize(bytes(data), 32, max_pixels=limit)
        assert info.value.code == "too_many_pixels", info.value.detail


def _with_exif(jpeg: bytes, payload: bytes) -> bytes:
    """An APP1 segment with ``payload`` after the JFIF header (APP0) of ``jpeg``."""
    at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:at] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


def test_anonymised_or_garbage_exif_still_decodes(real_bytes):
    """What an anonymiser that zeroes the EXIF payload leaves behind a JFIF dpi header."""
    jfif = _jpeg(Image.open(io.BytesIO(real_bytes[0])), dpi=(72, 72))
    zeroed = _with_exif(jfif, b"Exif\x00\x00" + b"\x00" * 64)
    with pytest.raises(SyntaxError):  # what PIL does with it: the reason this guard exists
        Image.open(io.BytesIO(zeroed)).getexif()
    assert np.array_equal(decode_resize(zeroed, 64), decode_resize(jfif, 64))
    garbage = _with_exif(jfif, b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff" + b"\x07" * 14)
    assert decode_resize(garbage, 32).shape == (32, 32, 3)


def test_multi_picture_jpeg_scores_its_first_frame():
    first = Image.new("RGB", (80, 60), (200, 30, 30))
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[Image.new("RGB", (80, 60), (30, 30, 200))])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    arr = decode_resize(buf.getvalue(), 16)
    assert arr.shape == (16, 16, 3) and arr[..., 0].mean() > 150 > arr[..., 2].mean()


def test_decode_each_turns_any_decoder_error_into_one_reject(real_bytes, monkeypatch):
    import lesionspark.imaging.images as images

    def explode(data, *a, **kw):
        if data == b"boom":
            raise RuntimeError("an unexpected decoder fault")
        return decode_resize(data, *a, **kw)
    monkeypatch.setattr(images, "decode_resize", explode)
    arrays, reasons, details = images.decode_each([real_bytes[0], b"boom", b""], 32)
    assert arrays[0].shape == (32, 32, 3) and arrays[1] is None and arrays[2] is None
    assert reasons == [None, "corrupt_image", "empty_file"] and "RuntimeError" in details[1]
