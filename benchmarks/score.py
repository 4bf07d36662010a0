"""Scoring throughput against a bare loop, a process pool and the Spark floor; quiet nights; scale.

In one run, on the same files, CNN at ``--size`` px (weights=None: throughput does not depend on them),
one TensorFlow thread per process, batches of ``--batch``:

  bare            one process: read file, ``decode_resize``, ``model.predict`` in batches
  pool of 2       two such processes (``multiprocessing.Pool``), each with the model loaded once
  floor           Spark local[2], the minimal job: ``binaryFile`` -> ``mapInPandas`` (decode + predict,
                  model loaded once per worker) -> count; and the same from paths (the worker reads)
  score N         ``lesionspark score`` end to end on N new files (list, index, read + hash + decode +
                  predict, tables, commit), then on 4N (N originals + 3N byte-distinct copies: bytes
                  appended after the JPEG end marker, which decoders ignore), and the quiet rerun of 4N
  scale           for each size in ``--scale``: that many small distinct non-image files (hashed, then
                  rejected as not_an_image: listing + index + hashing, no decode cost), a first run and
                  its quiet rerun; seconds per 1,000 files, peak driver JVM heap and driver Python RSS

Files: GENERATED 600x450 JPEGs from ``lesionspark synth`` (``--data`` reuses a synth output folder).

    .venv/bin/python benchmarks/score.py --n-images 5000 --scale 5000 20000 100000 [--data DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DriverPeak, WorkerPeak, publish  # noqa: E402

_MODEL = {}


def _init(model_path: str, card_path: str, batch: int) -> None:
    from lesionspark.core.threads import limit_threads
    limit_threads(1)
    import numpy as np
    from lesionspark.store import storage
    from lesionspark.inference.predictor import load_model, predict_arrays
    card = storage.read_json(card_path)
    _MODEL.update(card=card, model=load_model(model_path), batch=batch)
    size = card["image_size"]
    predict_arrays(_MODEL["model"], card, np.zeros((batch, size, size, 3), np.uint8), batch)


def _score_chunk(paths: list[str]) -> int:
    import numpy as np
    from lesionspark.imaging.images import decode_resize
    from lesionspark.inference.predictor import predict_arrays
    card = _MODEL["card"]
    imgs = [decode_resize(open(p, "rb").read(), card["image_size"], card["resize"]) for p in paths]
    return len(predict_arrays(_MODEL["model"], card, np.stack(imgs), _MODEL["batch"]))


def chunks(paths, k):
    return [paths[i:i + k] for i in range(0, len(paths), k)]


def bare(model_dir: Path, paths: list[str], batch: int, procs: int) -> float:
    ctx = mp.get_context("spawn")  # a fresh interpreter: TensorFlow's threads set before it starts
    with ctx.Pool(procs, _init, (str(model_dir / "model.keras"), str(model_dir / "model_card.json"), batch)) as pool:
        pool.map(_score_chunk, [paths[:batch]] * procs)  # every process loaded and traced
        start = time.perf_counter()
        n = sum(pool.map(_score_chunk, chunks(paths, batch), chunksize=1))
        return n / (time.perf_counter() - start)


def spark_floors(spark, model_dir: Path, folder: str, n: int, batch: int) -> dict:
    import pandas as pd
    from lesionspark.store import storage
    card = storage.read_json(str(model_dir / "model_card.json"))
    uri = str(model_dir / "model.keras")

    def predict(read, warm=False):
        def run(batches):
            import numpy as np
            from lesionspark.imaging.images import decode_resize
            from lesionspark.inference.predictor import load_model, predict_arrays
            from lesionspark.core.threads import limit_threads
            limit_threads(1)
            model = load_model(uri)
            for b in batches:
                if warm:
                    yield pd.DataFrame({"n": [len(b)]})
                    continue
                imgs = [decode_resize(read(x), card["image_size"], card["resize"]) for x in b.iloc[:, 0]]
                yield pd.DataFrame({"n": [len(predict_arrays(model, card, np.stack(imgs), batch))]})
        return run

    def from_path(p):
        with open(p[5:] if p.startswith("file:") else p, "rb") as fh:
            return fh.read()

    mb = sum(f.stat().st_size for f in Path(folder).rglob("*.jpg")) / 2**20
    conf = {"spark.sql.files.maxPartitionBytes": str(int(mb * 2**20 / 16)), "spark.sql.files.openCostInBytes": "1",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(batch)}
    for k, v in conf.items():
        spark.conf.set(k, v)
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(folder)
    spark.range(4).repartition(2).mapInPandas(predict(bytes, warm=True), "n long").count()  # model in both workers
    out = {}
    start = time.perf_counter()
    df.select("content").mapInPandas(predict(bytes), "n long").count()
    out["floor_binaryfile"] = n / (time.perf_counter() - start)
    paths = df.select("path").cache()
    paths.count()
    start = time.perf_counter()
    paths.mapInPandas(predict(from_path), "n long").count()
    out["floor_paths"] = n / (time.perf_counter() - start)
    paths.unpersist()
    for k in conf:
        spark.conf.unset(k)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=5000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--scale", type=int, nargs="*", default=[5000, 20000, 100000])
    ap.add_argument("--data", default=None, help="a `lesionspark synth` output folder to reuse")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.core.config import Config
    from lesionspark.core.progress import setup_logging
    from lesionspark.score.driver import score
    from lesionspark.store.spark import get_spark
    setup_logging("INFO")
    work = Path(tempfile.mkdtemp(prefix="lesionspark-bench-score-"))
    if args.data:
        src = sorted(Path(args.data).glob("images_generated/*.jpg"))
    else:
        from lesionspark.imaging.synth import synth
        made = synth(str(work / "raw"), n_images=args.n_images, seed=21, with_genuine=False, progress=False)
        src = sorted(Path(made["images"][0]).glob("*.jpg"))
    src = src[: args.n_images]
    archive = work / "archive"
    for i, p in enumerate(src):  # a dated folder tree, as archives are laid out
        d = archive / "base" / f"2026-11-{i % 28 + 1:02d}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(p, d / p.name)
    paths = sorted(str(p) for p in (archive / "base").rglob("*.jpg"))
    n = len(paths)
    print(f"files: {n} GENERATED JPEGs, {sum(os.path.getsize(p) for p in paths) / 2**20:.0f} MB", flush=True)
    publish(work / "root", "cnn", args.size)
    model_dir = work / "root" / "models" / "cnn" / "bench"
    results = {"bare": bare(model_dir, paths, args.batch, 1)}
    results["pool2"] = bare(model_dir, paths, args.batch, 2)
    print(f"bare {results['bare']:.1f} img/s, pool of 2 {results['pool2']:.1f} img/s", flush=True)

    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                                 f"inference.batch_size={args.batch}", "score.model=cnn"])
    spark = get_spark(cfg)
    spark.range(4).count()
    results.update(spark_floors(spark, model_dir, str(archive / "base"), n, args.batch))

    def run(root: Path, folder: Path):
        with WorkerPeak() as wpeak, DriverPeak(spark) as dpeak:
            start = time.perf_counter()
            s = score(spark, cfg.with_overrides({"storage.root": str(root), "score.archive": str(folder)}))
            seconds = time.perf_counter() - start
        assert s["scored"] + s["rejected"] + s["skipped"] == s["listed"], s
        return s, seconds, wpeak.peak / 2**20, dpeak.heap / 2**20, dpeak.rss / 2**20

    s, sec, wpeak, _, _ = run(work / "root", archive / "base")
    results[f"score_{n}_new"] = s["scored"] / sec
    memory = {f"worker_peak_mb_{n}": wpeak}
    for k in (1, 2, 3):
        d = archive / f"copy{k}"
        for p in paths:
            q = d / Path(p).relative_to(archive / "base")
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(Path(p).read_bytes() + b"\0" * k)
    root4 = work / "root4"
    shutil.copytree(work / "root" / "models", root4 / "models")
    s, sec, wpeak, _, _ = run(root4, archive)
    results[f"score_{4 * n}_new"] = s["scored"] / sec
    memory[f"worker_peak_mb_{4 * n}"] = wpeak
    s, quiet, _, _, _ = run(root4, archive)
    assert s["scored"] == 0 and s["read"] == 0, s
    print(f"quiet night: {s['listed']} unchanged files in {quiet:.1f}s", flush=True)

    scale = []
    for size in args.scale:
        d = work / f"small{size}"
        for i in range(size):  # distinct small files, 100 to a folder
            sub = d / f"{i // 100:05d}"
            if i % 100 == 0:
                sub.mkdir(parents=True)
            (sub / f"f{i:07d}.jpg").write_bytes(i.to_bytes(8, "little") * 64)
        root = work / f"root-small{size}"
        shutil.copytree(work / "root" / "models", root / "models")
        s1, t1, _, heap1, rss1 = run(root, d)
        s2, t2, _, heap2, rss2 = run(root, d)
        assert s1["rejected"] == size and s2["skipped"] == size, (s1, s2)
        scale.append({"files": size, "first_run_s": t1, "first_s_per_1000": 1000 * t1 / size,
                      "quiet_s": t2, "quiet_s_per_1000": 1000 * t2 / size,
                      "driver_heap_mb": max(heap1, heap2), "driver_rss_mb": max(rss1, rss2)})
        print(json.dumps({k: round(v, 2) for k, v in scale[-1].items()}), flush=True)
        shutil.rmtree(d)
    spark.stop()

    floor = max(results["floor_binaryfile"], results["floor_paths"])
    print("\n| path | img/s | x bare | x floor |\n| --- | ---: | ---: | ---: |")
    for k, v in results.items():
        print(f"| {k} | {v:.1f} | {v / results['bare']:.2f} | {v / floor:.2f} |")
    print(f"\nquiet night over {4 * n} unchanged files: {quiet:.1f} s")
    print("\n| files listed | first run s | s / 1000 files | quiet rerun s | s / 1000 files | driver JVM heap MB | "
          "driver Python RSS MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in scale:
        print(f"| {r['files']} | {r['first_run_s']:.1f} | {r['first_s_per_1000']:.2f} | {r['quiet_s']:.1f} | "
              f"{r['quiet_s_per_1000']:.2f} | {r['driver_heap_mb']:.0f} | {r['driver_rss_mb']:.0f} |")
    print(json.dumps({**{k: round(v, 1) for k, v in results.items()}, **{k: round(v) for k, v in memory.items()},
                      "quiet_s": round(quiet, 1)}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
