"""Evaluation throughput, in one run on the same split files.

  bare      one process, one TensorFlow thread: read the split's Parquet with pyarrow, decode the PNGs,
            model.predict in batches, scikit-learn's classification metrics
  predict   `evaluate.predict_split` alone: Spark reads the Petastorm split, the scoring UDF
            predicts in local[2], probabilities collected to the driver
  evaluate  `lesionspark evaluate` end to end: predict, all metrics with a 1,000-resample lesion
            bootstrap, the metrics table and the report with its plots

Data: N GENERATED 600x450 JPEGs (lesionspark synth) ingested at 128 px, split 10/45/45 so val and
test hold most of them. Model: the CNN with random weights (throughput does not depend on them).

    .venv/bin/python benchmarks/evaluate.py --n-images 3000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402


def bare_child(root: str, splits: list[str], batch: int) -> None:
    from lesionspark.core.threads import limit_threads
    limit_threads(1)
    import io
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.metrics import balanced_accuracy_score, f1_score
    from lesionspark.store import storage
    from lesionspark.store.layout import Layout
    from lesionspark.inference.predictor import load_model, predict_arrays
    from lesionspark.store.registry import resolve_model
    card, model_uri = resolve_model(root, "cnn:bench")
    model = load_model(model_uri)
    layout = Layout(root)
    predict_arrays(model, card, np.zeros((batch, card["image_size"], card["image_size"], 3), np.uint8), batch)
    start, n = time.perf_counter(), 0
    for split in splits:
        fs, path = storage.filesystem(layout.split("bench", split))
        table = pq.read_table(path, columns=["image", "label"], filesystem=fs)
        images, labels = table.column("image").to_pylist(), np.array(table.column("label").to_pylist())
        probs = []
        for i in range(0, len(images), batch):
            arr = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in images[i:i + batch]])
            probs.append(predict_arrays(model, card, arr, batch))
        pred = np.concatenate(probs).argmax(1)
        balanced_accuracy_score(labels, pred), f1_score(labels, pred, average="macro", zero_division=0)
        n += len(images)
    print(json.dumps({"images": n, "images_per_s": n / (time.perf_counter() - start)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bare-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_child:
        return bare_child(args.bare_child[0], args.bare_child[1].split(","), args.batch)

    from lesionspark.store import storage
    from lesionspark.store.layout import Layout
    from lesionspark.core.config import Config
    from lesionspark.evaluate.driver import evaluate, predict_split
    from lesionspark.ingest.driver import ingest
    from lesionspark.core.progress import setup_logging
    from lesionspark.store.registry import resolve_model
    from lesionspark.store.spark import get_spark
    from lesionspark.imaging.synth import synth
    setup_logging("WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    made = synth(str(tmp / "raw"), n_images=args.n_images, seed=0, with_genuine=False, workers=2, progress=False)
    cfg = Config.load(overrides=["spark.master=local[2]", f"storage.root={tmp / 'root'}", "dataset.name=bench",
                                 f"dataset.image_size={args.size}", "ingest.split.train=0.1", "ingest.split.val=0.45",
                                 "ingest.split.test=0.45", "spark.log_level=ERROR",
                                 "spark.conf.spark.ui.showConsoleProgress=false"])
    cfg = cfg.with_overrides({"ingest.metadata": made["metadata"], "ingest.images": made["images"],
                              "evaluate.model": "cnn:bench", "inference.batch_size": args.batch})
    spark = get_spark(cfg)
    manifest = ingest(spark, cfg)
    publish(tmp / "root", "cnn", args.size)
    n = sum(manifest["counts"]["by_split"][s]["total"] for s in ("val", "test"))

    root = storage.normalize_uri(str(tmp / "root"))
    bare = json.loads(subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--bare-child", root,
                                      "val,test"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    card, model_uri = resolve_model(root, "cnn:bench")
    layout = Layout(root)
    predict_split(spark, layout.split("bench", "val"), card, model_uri, cfg)  # warm: workers + model loaded
    start = time.perf_counter()
    for s in ("val", "test"):
        predict_split(spark, layout.split("bench", s), card, model_uri, cfg)
    predict_s = time.perf_counter() - start
    start = time.perf_counter()
    summary = evaluate(spark, cfg, run_id="bench")
    evaluate_s = time.perf_counter() - start
    result = {"images": n, "size": args.size, "bare_images_per_s": round(bare["images_per_s"], 1),
              "predict_images_per_s": round(n / predict_s, 1), "evaluate_images_per_s": round(n / evaluate_s, 1),
              "evaluate_seconds": round(evaluate_s, 1),
              "predict_vs_bare": round(n / predict_s / bare["images_per_s"], 2),
              "evaluate_vs_bare": round(n / evaluate_s / bare["images_per_s"], 2),
              "report": summary["report"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
