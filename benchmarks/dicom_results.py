"""What writing DICOM results (``score.dicom_results``) adds to a scoring run, per 1,000 images, as
the difference against the same run without them, on the same archive, in the same Spark session.

    .venv/bin/python benchmarks/dicom_results.py --n-images 1000

The archive: ``--n-images`` VL Photographic objects, each holding one of the 56 genuine HAM10000
JPEGs as it is (baseline JPEG), under new UIDs (so every object is a new content). The model: an
untrained CNN at 64 px (the cost measured is building and writing the objects, not the model),
its card's threshold 0, so every image is flagged. Four runs, each on a fresh root, after a
warm-up: reports only (off / on), and with the heatmaps of ``score.explain_flagged`` (off / on:
then every image also gets a Segmentation). Each pair is timed twice, in alternating order.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build_archive(out: Path, n: int) -> None:
    from pydicom.uid import generate_uid
    from test_dicom import dicom_from_jpeg
    from lesionspark.imaging.synth import GENUINE_DIR
    jpegs = sorted(p.read_bytes() for p in GENUINE_DIR.joinpath("images").iterdir() if p.name.endswith(".jpg"))
    out.mkdir(parents=True)
    study = generate_uid()
    for i in range(n):
        (out / f"IMG{i:05d}").write_bytes(dicom_from_jpeg(jpegs[i % len(jpegs)], study, generate_uid(), generate_uid()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from conftest import make_cfg, publish_untrained_model
    from lesionspark.core.progress import setup_logging
    from lesionspark.score.driver import score
    from lesionspark.store.spark import get_spark
    setup_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="lesionspark-dicom-results-"))
    build_archive(work / "archive", args.n_images)
    publish_untrained_model(work / "registry", size=64)
    base = make_cfg(work / "root", **{"spark.conf": {"spark.ui.showConsoleProgress": "false"}})
    spark = get_spark(base)
    runs = [0]

    def timed(dicom: bool, explain: bool) -> float:
        runs[0] += 1
        root = work / f"root-{runs[0]}"
        shutil.copytree(work / "registry" / "models", root / "models")  # the same model in every root
        cfg = base.with_overrides({"storage.root": str(root), "score.archive": str(work / "archive"),
                                   "score.model": "cnn:v1", "score.dicom_results": dicom,
                                   "score.explain_flagged": explain, "evaluate.default_threshold": 0.0})
        t0 = time.perf_counter()
        out = score(spark, cfg, run_id=f"r{runs[0]}")
        seconds = time.perf_counter() - t0
        assert out["scored"] == args.n_images, out
        written = len(list((root / "dicom_results").rglob("*.dcm"))) if dicom else 0
        print(f"  dicom_results={dicom!s:5} explain_flagged={explain!s:5}: {seconds:6.1f} s, {written} objects",
              flush=True)
        return seconds

    timed(False, False)  # warm-up: Python workers, TensorFlow, the model
    result = {}
    for explain in (False, True):
        off, on = [], []
        for k in range(args.repeats):
            for dicom in ((False, True) if k % 2 == 0 else (True, False)):
                (on if dicom else off).append(timed(dicom, explain))
        key = "reports and segmentations" if explain else "reports only"
        result[key] = {"off_s": min(off), "on_s": min(on),
                       "added_s_per_1000": round((min(on) - min(off)) * 1000 / args.n_images, 1)}
        print(f"{key}: off {min(off):.1f} s, on {min(on):.1f} s: +{result[key]['added_s_per_1000']} s per 1,000 images")
    print(json.dumps({"n_images": args.n_images, **result}, indent=2))


if __name__ == "__main__":
    main()
