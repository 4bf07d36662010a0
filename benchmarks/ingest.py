"""Ingest throughput, in one run on the same files:

  spark     the ingest job on local[2] (listing, read, decode+resize, PNG encode, Petastorm write)
  bare      one process: read file, PIL draft + bilinear resize (the same decode_resize)
  naive     one process: read file, full PIL decode + bicubic resize
  opencv    one process: read file, cv2.imdecode(IMREAD_REDUCED_COLOR_2/4) + INTER_AREA resize

Files: N generated 600x450 JPEGs (lesionspark synth, GENERATED images) plus the 56 genuine HAM10000
JPEGs, all named in one metadata file. Ratios are against `bare`, measured in the same run.

    .venv/bin/python benchmarks/ingest.py --n-images 1000 --genuine-copies 20 --size 128
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesionspark.config import Config  # noqa: E402
from lesionspark.images import decode_resize, decode_resize_naive  # noqa: E402


def files_of(folders):
    return sorted(str(p) for f in folders for p in Path(f).iterdir() if p.suffix == ".jpg")


def loop(paths, fn):
    start = time.perf_counter()
    for p in paths:
        with open(p, "rb") as fh:
            out = fn(fh.read())
        assert out.shape[2] == 3
    return len(paths) / (time.perf_counter() - start)


def opencv_decode(size):
    def run(data: bytes) -> np.ndarray:
        buf = np.frombuffer(data, np.uint8)
        flag = cv2.IMREAD_REDUCED_COLOR_4 if size * 4 <= 450 else cv2.IMREAD_REDUCED_COLOR_2 \
            if size * 2 <= 450 else cv2.IMREAD_COLOR
        img = cv2.imdecode(buf, flag)
        return cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--genuine-copies", type=int, default=20,
                    help="copies of each of the 56 genuine JPEGs added under new names")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.progress import setup_logging
    setup_logging("INFO")
    cv2.setNumThreads(1)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lesionspark-bench-"))
    from lesionspark.synth import synth
    made = synth(str(work / "raw"), n_images=args.n_images, seed=11, with_genuine=True, progress=False)
    copies = work / "raw" / "images_genuine_copies"
    copies.mkdir(exist_ok=True)
    meta_lines = []
    genuine_rows = {l.split(",")[1]: l for l in Path(made["metadata"]).read_text().splitlines()[1:]}
    for k in range(args.genuine_copies):
        for src in sorted(Path(made["images"][1]).iterdir()):
            new_id = f"{src.stem}_copy{k:02d}"
            shutil.copy(src, copies / f"{new_id}.jpg")
            lesion, _, rest = genuine_rows[src.stem].split(",", 2)
            meta_lines.append(f"{lesion}_copy{k:02d},{new_id},{rest}")
    with open(made["metadata"], "a") as fh:
        fh.write("\n".join(meta_lines) + ("\n" if meta_lines else ""))
    made["images"].append(str(copies))
    paths = files_of(made["images"])
    n_genuine = made["genuine"] * (1 + args.genuine_copies)
    print(f"files: {len(paths)} ({made['generated']} GENERATED 600x450 + {n_genuine} genuine JPEGs "
          f"({made['genuine']} x {1 + args.genuine_copies} copies)), "
          f"{sum(os.path.getsize(p) for p in paths) / 1e6:.0f} MB, size {args.size}px", flush=True)
    loop(paths[:50], lambda d: decode_resize(d, args.size))  # warm the page cache and imports

    results = {}
    results["bare"] = loop(paths, lambda d: decode_resize(d, args.size))
    results["naive"] = loop(paths, lambda d: decode_resize_naive(d, args.size))
    results["opencv"] = loop(paths, opencv_decode(args.size))
    genuine = [p for p in paths if "images_genuine" in p]
    results["bare_genuine_only"] = loop(genuine, lambda d: decode_resize(d, args.size))
    results["naive_genuine_only"] = loop(genuine, lambda d: decode_resize_naive(d, args.size))

    from lesionspark.ingest import ingest
    from lesionspark.spark import get_spark
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                                 f"dataset.image_size={args.size}"]).with_overrides({
        "storage.root": str(work / "root"), "ingest.metadata": made["metadata"], "ingest.images": made["images"]})
    spark = get_spark(cfg)
    spark.range(10).count()  # JVM up before the clock starts
    start = time.perf_counter()
    manifest = ingest(spark, cfg)
    wall = time.perf_counter() - start
    assert manifest["counts"]["written"] == len(paths), manifest["counts"]
    results["spark_job"] = len(paths) / wall
    results["spark_decode_stage"] = manifest["timing"]["decode_images_per_s"]
    spark.stop()

    print(f"\n{'path':<22}{'img/s':>9}{'x bare':>9}")
    for k, v in results.items():
        print(f"{k:<22}{v:>9.1f}{v / results['bare']:>9.2f}")
    print(f"\nspark job wall time: {wall:.1f}s for {len(paths)} images (local[2], {os.cpu_count()} cores)")
    print(f"draft vs naive (same files): {results['bare'] / results['naive']:.2f}x; "
          f"genuine only: {results['bare_genuine_only'] / results['naive_genuine_only']:.2f}x")
    print(f"spark job vs bare: {results['spark_job'] / results['bare']:.2f}x; "
          f"spark decode stage vs bare: {results['spark_decode_stage'] / results['bare']:.2f}x")
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))
    if not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
