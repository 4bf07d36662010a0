"""Pure image functions: bytes in, a square RGB uint8 array out, or an ImageRejected with a reason.

Nothing here knows about Spark, so the same code decodes in ingest executors, in the scoring UDF
and in tests.
"""
from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Never accept truncated data silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False

RESIZE_MODES = ("squash", "crop")
# A file's decode longer than this is a reject (decode_timeout): a crafted object can send a parser
# into a loop (a JPEG 2000 box of length 0 did, in pydicom), and one file must not stall a run.
DECODE_TIMEOUT_S = 60.0
ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG")  # MPO: multi-picture JPEG (stereo, some dermatoscopes); frame 0 is used
JPEG_FAMILY = ("JPEG", "MPO")


class ImageRejected(Exception):
    """An input that cannot become a record. ``code`` is stable and short, ``detail`` human."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty_file", "the file has 0 bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "not a recognised image format") from None
    except Image.DecompressionBombError as exc:  # PIL's own guard fires at open past 2x its limit
        raise ImageRejected("too_many_pixels", f"{exc} (decompression-bomb guard)") from None
    except Exception as exc:  # PIL raises several types on broken headers
        raise ImageRejected("corrupt_image", f"cannot read the image header: {exc}") from None
    if img.format not in ACCEPTED_FORMATS:
        raise ImageRejected("unsupported_format", f"{img.format} images are not accepted "
                            f"(accepted: {', '.join(ACCEPTED_FORMATS)})")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} exceeds max_image_pixels="
                            f"{max_pixels} (decompression-bomb guard)")
    if width < 1 or height < 1:
        raise ImageRejected("corrupt_image", f"invalid dimensions {width}x{height}")
    return img


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation of a JPEG, 1 (as stored) when there is none or it cannot be parsed: an
    anonymiser that zeroes the EXIF payload leaves a header PIL rejects (``SyntaxError: not a TIFF
    file``), and the image itself is still whole."""
    if img.format not in JPEG_FAMILY:
        return 1
    try:
        value = img.getexif().get(0x0112, 1)
        return value if value in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - any metadata fault, never the whole file
        return 1


def decode_resize(data: bytes, size: int, mode: str = "squash", max_pixels: int = 40_000_000,
                  use_draft: bool = True) -> np.ndarray:
    """Decode JPEG/PNG bytes to a ``size x size x 3`` uint8 RGB array.

    - JPEGs are downscaled in the DCT domain by libjpeg first (``Image.draft``), to the smallest
      power-of-two reduction that is still at least ``size`` on both sides, so a 600x450 JPEG is
      never fully decoded to make a 128x128 image; then a bilinear resize makes the final size.
    - EXIF orientation is applied; grayscale, CMYK, palette and alpha images become RGB.
    - ``mode='squash'`` keeps the whole field of view; ``'crop'`` takes the centre square first.
    Raises :class:`ImageRejected` for empty, non-image, truncated, oversized or unsupported input.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    img = _open(data, max_pixels)
    orientation = _orientation(img)
    if use_draft and img.format in JPEG_FAMILY:
        # EXIF rotations by 90/270 swap the axes; draft needs both sides >= size either way.
        img.draft("RGB", (size, size))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except Image.DecompressionBombWarning as exc:
        raise ImageRejected("too_many_pixels", f"{exc} (decompression-bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("truncated_or_corrupt", f"image data cannot be decoded: {exc}") from None
    if orientation != 1:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a metadata fault: the pixels as stored are still the image
            pass
    if img.mode != "RGB":
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # Composite transparency onto white rather than letting it turn black.
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
            img = background
        else:
            img = img.convert("RGB")
    return _fit(img, size, mode)


def fit_array(rgb: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """An RGB uint8 array of any size (a DICOM frame) made ``size x size x 3`` as ``decode_resize``
    makes decoded files: the same crop rule, the same bilinear resize."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    return _fit(Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB"), size, mode)


def _fit(img: Image.Image, size: int, mode: str) -> np.ndarray:
    if mode == "crop":
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # defensive: never write a record of the wrong shape
        raise ImageRejected("corrupt_image", f"decoded to shape {arr.shape}")
    return arr


def decode_each(contents, size: int, mode: str = "squash", max_pixels: int = 40_000_000,
                reasons=None, details=None):
    """``decode_resize`` over many files: (arrays or None, reason codes or None, details or None).
    Rows that already have a reason (``reasons``/``details``, e.g. a read or size reject) are not
    decoded and keep it."""
    arrays, out_reasons, out_details = [], [], []
    for i, data in enumerate(contents):
        if reasons is not None and reasons[i] is not None:
            arrays.append(None)
            out_reasons.append(reasons[i])
            out_details.append(details[i])
            continue
        try:
            arrays.append(decode_resize(bytes(data) if data is not None else b"", size, mode, max_pixels))
            out_reasons.append(None)
            out_details.append(None)
        except ImageRejected as rej:
            arrays.append(None)
            out_reasons.append(rej.code)
            out_details.append(rej.detail)
        except Exception as exc:  # noqa: BLE001 - whatever a file contains, it is one reject, never a failed task
            arrays.append(None)
            out_reasons.append("corrupt_image")
            out_details.append(f"decoder error {type(exc).__name__}: {str(exc)[:200]}")
    return arrays, out_reasons, out_details
