"""Coverage-guided fuzzing (atheris, libFuzzer) of the entry point every stage decodes through:
bytes in, images or one reject row out (``frames.decode_frames``: JPEG, PNG, MPO and DICOM in
every transfer syntax pydicom decodes here).

A finding is an input that makes it raise (anything escaping is a failed Spark task), return
anything but one well-formed row per image, run longer than ``--timeout`` seconds, or push the
process past ``--rss-mb``; an input that the decode deadline (``frames.DECODE_TIMEOUT_S``, set to
half of ``--timeout`` here) turns into a ``decode_timeout`` row is saved as ``slow-*`` too.
Coverage counts the instrumented Python of lesionspark and pydicom (PIL's and the codecs' C code is
run, not instrumented). The seeds: the genuine HAM10000 JPEGs
(shrunk), PNGs made from them, pydicom's own test files in each transfer syntax, and the hostile
objects of ``tests/hostile.py``, small. Crashes are written to ``--artifacts``; each becomes a test.

Not part of CI. Install atheris first (``requirements/fuzz.txt``), then:

    .venv/bin/python benchmarks/fuzz_decode.py --seconds 600 [--artifacts DIR]
    .venv/bin/python benchmarks/fuzz_decode.py --recheck DIR   # which saved inputs are real findings
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

with atheris.instrument_imports(include=["lesionspark", "pydicom"]):
    import pydicom  # noqa: F401  (imported here, so that its parser is instrumented too)
    import pydicom.filereader  # noqa: F401
    import pydicom.pixels  # noqa: F401
    from lesionspark.imaging import frames
    from lesionspark.imaging.frames import decode_frames

SIZE, MAX_PIXELS, BUDGET = 32, 4_000_000, 64 << 20
SYNTAXES = ["SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm", "SC_ybr_full_422_uncompressed.dcm",
            "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm",
            "SC_rgb_jls_lossy_line.dcm", "GDCMJ2K_TextGBR.dcm", "SC_jpeg_no_color_transform.dcm", "image_dfl.dcm",
            "examples_palette.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"]


def seeds(folder: Path) -> int:
    """Write the seed corpus into ``folder``; the number of seeds."""
    import pydicom
    from PIL import Image
    import hostile
    out = []
    for p in sorted((HERE.parents[1] / "lesionspark" / "data" / "ham10000" / "images").glob("*.jpg"))[:6]:
        img = Image.open(p).convert("RGB")
        img.thumbnail((96, 72))
        for fmt in ("JPEG", "PNG"):
            buf = io.BytesIO()
            img.save(buf, fmt)
            out.append(buf.getvalue())
    files = Path(pydicom.__file__).parent / "data" / "test_files"
    out += [(files / name).read_bytes() for name in SYNTAXES if (files / name).exists()]
    out += [hostile.many_frames(40), hostile.sixteen_bit_rle(24, 24, 2), hostile.deflate_zero_group_length(1 << 16),
            hostile.deflate_uid_past_4k(1 << 16)]
    for i, data in enumerate(out):
        (folder / f"seed{i:03d}").write_bytes(data)
    return len(out)


ARTIFACTS: list[Path] = []


def check(data: bytes) -> None:
    images = decode_frames([data], SIZE, "squash", MAX_PIXELS, "salt", [None], [None], BUDGET)
    if images[0][0].reason == "decode_timeout":  # the deadline caught a loop: a finding all the same
        import hashlib
        (ARTIFACTS[0] / f"slow-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
        print(f"fuzz: decode_timeout on a {len(data)}-byte input", flush=True)
    assert len(images) == 1 and images[0], "one file, at least one row"
    for im in images[0]:
        assert (im.array is None) != (im.reason is None), "an image or a reason, never both or neither"
        if im.array is not None:
            assert im.array.shape == (SIZE, SIZE, 3) and im.array.dtype.name == "uint8", im.array.shape
        else:
            assert isinstance(im.reason, str) and isinstance(im.detail, str) and len(images[0]) == 1


def recheck(folder: Path) -> int:
    """Run ``check`` on every input saved in ``folder``, each in a fresh process: the real findings
    (the process fails). A decoder crash contained in ``isolate.in_child`` is saved by libFuzzer as
    ``crash-*`` too (the forked child dies under its handlers), although the harness went on: such
    an input passes here, as one reject row."""
    import subprocess
    real = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        code = f"import sys; sys.argv = ['x']; from fuzz_decode import check; check(open({str(path)!r}, 'rb').read())"
        run = subprocess.run([sys.executable, "-c", code], cwd=HERE.parent, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            real.append(path.name)
            print(f"fuzz: FINDING {path.name}: {run.stderr.strip().splitlines()[-1:]}", flush=True)
    print(f"fuzz: {len(real)} real findings among {sum(1 for p in folder.iterdir() if p.is_file())} saved inputs")
    return 1 if real else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=600, help="the time budget")
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    ap.add_argument("--rss-mb", type=int, default=2048, help="the process's memory limit")
    ap.add_argument("--artifacts", default=None, help="where crashing inputs are written")
    ap.add_argument("--corpus", default=None, help="a corpus folder to start from and grow")
    ap.add_argument("--recheck", default=None, help="only re-run the inputs saved in this folder, each alone")
    args, rest = ap.parse_known_args()
    if args.recheck:
        sys.exit(recheck(Path(args.recheck)))
    corpus = Path(args.corpus or tempfile.mkdtemp(prefix="lesionspark-fuzz-"))
    corpus.mkdir(parents=True, exist_ok=True)
    n = seeds(corpus)
    artifacts = Path(args.artifacts or tempfile.mkdtemp(prefix="lesionspark-fuzz-artifacts-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.append(artifacts)
    frames.DECODE_TIMEOUT_S = args.timeout / 2  # the decode deadline fires first; libFuzzer's catches C loops
    print(f"fuzz: {n} seeds in {corpus}; findings to {artifacts}", flush=True)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}", f"-timeout={args.timeout}",
            f"-rss_limit_mb={args.rss_mb}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1", *rest]
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
