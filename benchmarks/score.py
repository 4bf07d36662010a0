"""Scoring throughput and worker memory, in one run on the same files.

  spark  `lesionspark score` end to end (list, hash, decode+resize, predict, write Parquet),
         local[2], one TensorFlow thread per Python worker
  bare   one process, one TensorFlow thread: read file, PIL decode + resize, model.predict in
         batches of the same size

Files: N GENERATED 600x450 JPEGs (lesionspark synth). The memory check at 4N files adds three
copies of each with bytes appended after the JPEG's end marker (decoders ignore them: same decode
cost, a different SHA-256, so each copy is a new image to the scorer). Models: the CNN and ResNet50
(weights=None: throughput does not depend on the weights) at 128 px.

    .venv/bin/python benchmarks/score.py --n-images 5000
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WorkerPeak, publish  # noqa: E402


def bare_child(model_path: str, card_path: str, folder: str, limit: int, batch: int) -> None:
    from lesionspark.worker import _limit_threads
    _limit_threads(1)
    import numpy as np
    from lesionspark import storage
    from lesionspark.images import decode_resize
    from lesionspark.predict import load_model, predict_arrays
    card = storage.read_json(card_path)
    model = load_model(model_path)
    paths = sorted(str(p) for p in Path(folder).rglob("*.jpg"))[:limit]
    predict_arrays(model, card, np.zeros((batch, card["image_size"], card["image_size"], 3), np.uint8), batch)
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        imgs = [decode_resize(open(p, "rb").read(), card["image_size"], card["resize"]) for p in paths[i:i + batch]]
        predict_arrays(model, card, np.stack(imgs), batch)
    print(json.dumps({"images_per_s": len(paths) / (time.perf_counter() - start)}))


def main():
    if sys.argv[1:2] == ["bare-child"]:
        a = sys.argv[2:]
        return bare_child(a[0], a[1], a[2], int(a[3]), int(a[4]))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.progress import setup_logging
    setup_logging("INFO")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=5000)
    ap.add_argument("--resnet-images", type=int, default=600)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lesionspark-bench-score-"))
    from lesionspark.config import Config
    from lesionspark.score import score
    from lesionspark.spark import get_spark
    from lesionspark.synth import synth
    t = time.perf_counter()
    made = synth(str(work / "raw"), n_images=args.n_images, seed=21, with_genuine=False, progress=False)
    files = sorted(Path(made["images"][0]).glob("*.jpg"))
    print(f"files: {len(files)} GENERATED JPEGs in {time.perf_counter() - t:.0f}s", flush=True)
    small = work / "resnet_archive"
    small.mkdir()
    for p in files[: args.resnet_images]:
        os.link(p, small / p.name)
    root = work / "root"
    for arch in ("cnn", "resnet50"):
        publish(root, arch, args.size)
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                                 f"score.batch_size={args.batch}"]).with_overrides({"storage.root": str(root)})
    spark = get_spark(cfg)
    spark.range(4).count()
    results = {}

    def bare(arch, folder, limit):
        out = subprocess.run([sys.executable, __file__, "bare-child", f"{root}/models/{arch}/bench/model.keras",
                              f"{root}/models/{arch}/bench/model_card.json", str(folder), str(limit), str(args.batch)],
                             capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]

    def spark_run(arch, folder, label):
        with WorkerPeak() as peak:
            start = time.perf_counter()
            s = score(spark, cfg.with_overrides({"score.archive": str(folder), "score.model": arch}), run_id=label)
            seconds = time.perf_counter() - start
        assert s["scored"] + s["skipped"] == s["listed"] and s["rejected"] == 0, s
        return s["scored"] / seconds, peak.peak / 2**20, s["scored"]

    results["cnn_bare"] = bare("cnn", made["images"][0], len(files))
    results["cnn_spark"], results["cnn_peak_mb_n"], n1 = spark_run("cnn", made["images"][0], "cnn-n")
    print(f"cnn: bare {results['cnn_bare']:.1f} img/s, spark {results['cnn_spark']:.1f} img/s "
          f"({results['cnn_spark'] / results['cnn_bare']:.2f}x), worker peak {results['cnn_peak_mb_n']:.0f} MB at {n1}",
          flush=True)
    # 4N: three byte-distinct copies of every file next to the originals (new content for the scorer).
    for k in (1, 2, 3):
        d = Path(made["images"][0]).parent / f"copy{k}"
        d.mkdir()
        for p in files:
            (d / p.name).write_bytes(p.read_bytes() + b"\0" * k)
    results["cnn_spark_3n_new"], results["cnn_peak_mb_4n"], n4 = spark_run("cnn", Path(made["images"][0]).parent, "cnn-4n")
    print(f"cnn: worker peak {results['cnn_peak_mb_4n']:.0f} MB at {n4 + n1} files listed ({n4} new, "
          f"{results['cnn_spark_3n_new']:.1f} img/s)", flush=True)
    results["resnet50_bare"] = bare("resnet50", small, args.resnet_images)
    results["resnet50_spark"], _, _ = spark_run("resnet50", small, "resnet")
    print(f"resnet50: bare {results['resnet50_bare']:.1f} img/s, spark {results['resnet50_spark']:.1f} img/s "
          f"({results['resnet50_spark'] / results['resnet50_bare']:.2f}x)", flush=True)
    spark.stop()
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))


if __name__ == "__main__":
    main()
