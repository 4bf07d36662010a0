"""Balance (SMOTE) at HAM10000's class structure: the Spark job vs imbalanced-learn on the whole matrix.

Data: all 10,015 rows of the genuine metadata file (nv 6705 ... df 115) as the training split,
each with a GENERATED 64x64 image (lesionspark.imaging.synth's renderer). Same data, same run:

  spark     `balance` (method smote, every class up to the majority), local[2]: reads the
            Petastorm split, SMOTE per class in executors, PNG-encodes and writes 46,935 rows
  imblearn  SMOTE(k=5).fit_resample on the whole float32 pixel matrix in one process, then the
            synthetic rows PNG-encoded and every row (the originals' PNGs as read, the new ones)
            written to Parquet with pyarrow: the same output work as the job, in a subprocess so
            its peak RSS is its own (its resampling alone is reported too)

  bare      lesionspark's per-class work without Spark, one process, class after class: read the
            class's rows from the Petastorm split with pyarrow, SMOTE, PNG-encode, write a part
  pool of 2 the same per-class function in ``ProcessPoolExecutor(2)``, largest job first
  floor     the same function as the only work of a Spark job (one class a task, ``local[2]``)

Peak memory: the largest RSS of any Spark Python worker (polled every 0.1 s) vs the imblearn process.

    .venv/bin/python benchmarks/balance.py
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WorkerPeak  # noqa: E402
SIZE = 64


def _render(args):
    from PIL import Image
    from lesionspark.imaging.synth import lesion_params, render
    lesion_id, image_id, dx = args
    img = render(lesion_params(lesion_id, dx, 0), image_id, 0, 128, 96)
    return np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR))


def make_data(work: Path):
    from lesionspark.core.classes import LABEL_OF, binary_label
    from lesionspark.dataset.schema import encode_image, lesion_schema
    from lesionspark.imaging.synth import genuine_metadata
    meta = genuine_metadata()
    with ProcessPoolExecutor(2) as pool:
        images = np.stack(list(pool.map(_render, zip(meta.lesion_id, meta.image_id, meta.dx), chunksize=256)))
    np.save(work / "X.npy", images.reshape(len(images), -1))
    np.save(work / "y.npy", meta.dx.map(LABEL_OF).to_numpy())
    schema = lesion_schema(SIZE)
    pdf = pd.DataFrame({
        "image_id": meta.image_id, "lesion_id": meta.lesion_id, "dx": meta.dx,
        "label": meta.dx.map(LABEL_OF).astype("int32"), "malignant": meta.dx.map(binary_label).astype("int8"),
        "image": [encode_image(schema, im) for im in images], "dx_type": meta.dx_type,
        "age": pd.to_numeric(meta.age, errors="coerce").astype("float32"), "sex": meta.sex,
        "localization": meta.localization, "sha256": "0" * 64, "source": "generated"})
    return pdf


def per_class(args) -> int:
    """One class's balanced rows made and written without Spark: what a balance class task does."""
    dx, train_uri, out, before, targets = args
    from lesionspark.balance.executor import balanced_schema, class_records
    from lesionspark.core.config import Config
    from lesionspark.store.parts import PartWriter
    cfg = Config.load()
    smote = (int(cfg.get("balance.k_neighbors")), int(cfg.get("balance.seed")), cfg.get("balance.neighbor_size"),
             int(cfg.get("balance.chunk_rows")), int(cfg.get("balance.synth_chunk_rows")))
    writer = PartWriter(out, balanced_schema(SIZE), 32 << 20, 2000, names=(sorted(targets).index(dx), "bench"))
    n = 0
    for records in class_records(dx, train_uri, "smote", before, targets, SIZE, smote, smote[3]):
        writer.add("train", records)
        n += len(records)
    writer.close()
    return n


def baselines(spark, work: Path, train_uri: str, before: dict, targets: dict) -> dict:
    """Seconds of the per-class work in one process, in a pool of 2, and as a bare Spark job."""
    import shutil
    order = sorted(before, key=lambda dx: (-(targets[dx] - before[dx]), -before[dx]))
    out = {}
    for name in ("bare", "pool2", "floor"):
        folder = work / f"base-{name}"
        (folder / "train").mkdir(parents=True)
        jobs = [(dx, train_uri, str(folder), before, targets) for dx in order]
        start = time.perf_counter()
        if name == "bare":
            n = sum(per_class(j) for j in jobs)
        elif name == "pool2":
            with ProcessPoolExecutor(2) as pool:
                n = sum(pool.map(per_class, jobs))
        else:
            n = spark.sparkContext.parallelize(jobs, len(jobs)).map(per_class).sum()
        out[name] = time.perf_counter() - start
        assert n == sum(targets.values()), (name, n)
        shutil.rmtree(folder)
    return out


def imblearn_child(work: str):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from imblearn.over_sampling import SMOTE
    from lesionspark.dataset.schema import encode_image, lesion_schema
    X = np.load(f"{work}/X.npy").astype(np.float32)
    y = np.load(f"{work}/y.npy")
    start = time.perf_counter()
    originals = pq.read_table(f"{work}/originals.parquet")
    Xr, yr = SMOTE(k_neighbors=5, random_state=0).fit_resample(X, y)
    resample = time.perf_counter() - start
    schema = lesion_schema(SIZE)
    new = [encode_image(schema, np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(SIZE, SIZE, 3))
           for x in Xr[len(X):]]
    images = originals.column("image").to_pylist() + new
    table = pa.table({"label": pa.array(yr.astype(np.int32)), "image": pa.array(images, pa.binary())})
    rows = max(1, int(len(images) * (32 << 20) / max(1, sum(map(len, images)))))  # row groups of ~32 MB
    pq.write_table(table, f"{work}/imblearn.parquet", row_group_size=rows)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "resample_seconds": resample, "rows": len(yr),
                      "counts": np.bincount(yr).tolist(),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--imblearn-child":
        return imblearn_child(sys.argv[2])
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.core.progress import setup_logging
    setup_logging("INFO")
    work = Path(tempfile.mkdtemp(prefix="lesionspark-bench-balance-"))
    t = time.perf_counter()
    pdf = make_data(work)
    print(f"data: {len(pdf)} rows (genuine metadata, GENERATED {SIZE}x{SIZE} images) in "
          f"{time.perf_counter() - t:.0f}s; counts {pdf.dx.value_counts().to_dict()}", flush=True)

    from lesionspark.store import storage

    from lesionspark.store.layout import Layout
    from lesionspark.balance.driver import balance
    from lesionspark.core.config import Config
    from lesionspark.store.parts import PartWriter, publish
    from lesionspark.dataset.schema import lesion_schema
    pdf[["image"]].to_parquet(work / "originals.parquet")
    from lesionspark.store.spark import get_spark
    root = work / "root"
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                                 "dataset.name=bench"]).with_overrides({"storage.root": str(root)})
    spark = get_spark(cfg)
    layout = Layout(str(root))
    (work / "_parts" / "train").mkdir(parents=True)
    writer = PartWriter(str(work / "_parts"), lesion_schema(SIZE), 32 << 20, 2000, names=(0, "bench"))
    names, groups = writer.add("train", pdf)
    writer.close()
    row_groups = {n: 1 + max(g for m, g in zip(names, groups) if m == n) for n in set(names)}
    publish(str(work / "_parts"), layout.dataset("bench"), lesion_schema(SIZE), {"train": row_groups})
    storage.write_json(layout.manifest("bench"), {"image_size": SIZE, "fingerprint": "benchmark"})

    counts = pdf.dx.value_counts().to_dict()
    base = baselines(spark, work, layout.split("bench", "train"), counts, {dx: max(counts.values()) for dx in counts})
    with WorkerPeak() as peak:
        start = time.perf_counter()
        summary = balance(spark, cfg.with_overrides({"balance.method": "smote"}))
        spark_seconds = time.perf_counter() - start
    spark.stop()

    child = subprocess.run([sys.executable, __file__, "--imblearn-child", str(work)], capture_output=True, text=True)
    imb = json.loads(child.stdout.strip().splitlines()[-1])
    largest_minority = sorted(summary["before"].values())[-2]
    print(f"\n{'':<36}{'seconds':>9}{'peak MB':>10}")
    print(f"{'spark balance (local[2], writes)':<36}{spark_seconds:>9.1f}{peak.peak / 2**20:>10.0f}  (largest Python worker)")
    print(f"{'imblearn SMOTE + encode + write':<36}{imb['seconds']:>9.1f}{imb['peak_rss_mb']:>10.0f}  (whole process)")
    print(f"{'  of which fit_resample':<36}{imb['resample_seconds']:>9.1f}")
    for name, label in (("bare", "bare: per-class work, one process"), ("pool2", "pool of 2, same function"),
                        ("floor", "Spark floor, same function")):
        print(f"{label:<36}{base[name]:>9.1f}            spark balance / this: {spark_seconds / base[name]:.2f}x")
    print(f"spark / (imblearn + encode + write) time: {spark_seconds / imb['seconds']:.2f}x; "
          f"spark / fit_resample alone: {spark_seconds / imb['resample_seconds']:.2f}x")
    print(f"after: spark {summary['after']}; imblearn counts {imb['counts']} ({imb['rows']} rows)")
    print(f"largest class SMOTE works on: {largest_minority} rows x {SIZE * SIZE * 3} features "
          f"(int16: {largest_minority * SIZE * SIZE * 3 * 2 / 2**20:.0f} MB)")
    print(json.dumps({**{f"{k}_seconds": round(v, 1) for k, v in base.items()}, "spark_seconds": round(spark_seconds, 1),
                      "spark_worker_peak_mb": round(peak.peak / 2**20), "imblearn_seconds": round(imb["seconds"], 1),
                      "imblearn_resample_seconds": round(imb["resample_seconds"], 1),
                      "imblearn_peak_mb": round(imb["peak_rss_mb"])}))


if __name__ == "__main__":
    main()
