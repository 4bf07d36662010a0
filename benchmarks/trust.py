"""Outputs a clinician can trust, measured.

  methods   Explanation methods by evidence. Trains each variant (CNN with its Flatten head, CNN with
            a global-average-pooling head; --variants adds resnet50 / efficientnet from random init)
            on GENERATED images whose lesion masks the generator knows (`lesionspark synth`, default:
            test_quality's 700 images, 64 px, 6 epochs x 1,200 samples, 2 Horovod workers, class
            weights), then over every test image and each method (gradcam, hirescam, gradcampp):
            the share of constant maps, the share with no positive evidence, the mean heatmap mass
            inside the lesion for the trained and a random-weights model. Then
            `evaluate` on each model: test ECE before/after temperature scaling, balanced accuracy, AUC.
  spread    Quality tests' spread: runs tests/test_quality.py once per seed (LESIONSPARK_QUALITY_SEED)
            and tabulates the figures each draw printed.

    .venv/bin/python benchmarks/trust.py methods --workdir /tmp/lst
    .venv/bin/python benchmarks/trust.py spread --seeds 0,1,2,3,4
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "cnn_flatten": {"model.arch": "cnn", "model.params": {"head": "flatten"}},
    "cnn_gap": {"model.arch": "cnn", "model.params": {"head": "gap"}},
    "resnet50": {"model.arch": "resnet50", "model.params": {"mode": "finetune"}},
    "efficientnet": {"model.arch": "efficientnet", "model.params": {"mode": "finetune"}},
}
W, H = 300, 225


def methods(args) -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.core.progress import setup_logging
    setup_logging("WARN")
    import pandas as pd
    import tensorflow as tf
    from lesionspark.core.config import Config
    from lesionspark.evaluate.driver import evaluate
    from lesionspark.modeling.gradcam import METHODS, empty, heatmaps
    from measures import lesion_mask, mass_inside
    from lesionspark.imaging.images import decode_each
    from lesionspark.ingest.driver import ingest
    from lesionspark.modeling.models import build, preprocess
    from lesionspark.inference.predictor import load_model
    from lesionspark.store.registry import resolve_model
    from lesionspark.store.spark import get_spark
    from lesionspark.imaging.synth import synth
    from lesionspark.train.driver import train
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lesionspark-bench-trust-"))
    root = work / "root"
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false"]) \
        .with_overrides({"storage.root": str(root), "dataset.image_size": args.size, "train.epochs": args.epochs,
                         "train.num_proc": 2, "train.samples_per_epoch": args.samples, "train.horovod_verbose": 0,
                         "train.deterministic": True, "ingest.rowgroup_size_mb": 1})
    spark = get_spark(cfg)
    made_file = work / "made.json"
    if not (args.reuse and made_file.exists()):
        made = synth(str(work / "raw"), n_images=args.n_images, seed=args.seed, width=W, height=H,
                     with_genuine=False, workers=2, progress=False)
        ingest(spark, cfg.with_overrides({"ingest.metadata": made["metadata"], "ingest.images": made["images"]}))
        made_file.write_text(json.dumps(made))
    made = json.loads(made_file.read_text())
    meta = pd.read_csv(made["metadata"]).set_index("image_id")
    test = spark.read.parquet(f"file://{root}/datasets/ham10000/test").select("image_id", "image") \
        .orderBy("image_id").toPandas()
    images = np.stack(decode_each(list(test["image"]), args.size, "squash")[0])
    masks = np.stack([lesion_mask(meta.loc[i, "lesion_id"], i, meta.loc[i, "dx"], args.seed, args.size, W, H)
                      for i in test["image_id"]])
    rows = []
    for name in args.variants.split(","):
        vcfg = cfg.with_overrides({**VARIANTS[name], "model.name": name})
        latest = root / "models" / name / "latest"
        if not (args.reuse and latest.exists()):
            train(spark, vcfg)
        card, model_uri = resolve_model(str(root), f"{name}:latest")
        ev = evaluate(spark, vcfg.with_overrides({"evaluate.model": f"{name}:latest"}))
        x = preprocess(card["preprocessing"], images.astype(np.float32))
        tf.keras.utils.set_random_seed(0)
        random_model = build(card["architecture"], args.size, 7, card["model_params"])
        for method in METHODS:
            figures = {}
            for kind, model in (("trained", load_model(model_uri)), ("random", random_model)):
                cams = np.concatenate([heatmaps(model, x[i:i + 64], method=method)[0] for i in range(0, len(x), 64)])
                figures[kind] = {
                    "constant": float(np.mean([c.std() <= 1e-3 for c in cams])),
                    "empty": float(np.mean(empty(cams))),
                    "mass": float(np.nanmean([mass_inside(c, m) for c, m in zip(cams, masks)]))}
            row = {"variant": name, "method": method, "n_test": len(x), "lesion_area": float(masks.mean()),
                   **{f"{k}_{kind}": v for kind, f in figures.items() for k, v in f.items()},
                   "test_balanced_accuracy": ev["splits"]["test"]["balanced_accuracy"],
                   "test_macro_auc": ev["splits"]["test"]["macro_auc"],
                   "test_ece_uncalibrated": ev["splits"]["test"]["ece_uncalibrated"],
                   "test_ece": ev["splits"]["test"]["ece"], "temperature": ev["temperature"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    spark.stop()
    print(f"\nGENERATED images: {args.n_images} (seed {args.seed}), {args.size} px, test n={len(images)}, "
          f"lesion area {masks.mean():.3f}\n")
    print("| variant | method | constant maps | no positive evidence | mass in lesion (trained) | "
          "mass in lesion (random) | test bal. acc | test ECE before -> after (T) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['method']} | {r['constant_trained']:.3f} | {r['empty_trained']:.3f} | "
              f"{r['mass_trained']:.3f} | {r['mass_random']:.3f} | {r['test_balanced_accuracy']:.3f} | "
              f"{r['test_ece_uncalibrated']:.3f} -> {r['test_ece']:.3f} ({r['temperature']:.2f}) |")


FIGURES = {"balanced_accuracy": r"test balanced accuracy ([0-9.]+)", "largest_share": r"identical-output group \d+ \(([0-9.]+)\)",
           "mass_trained": r"inside the lesion: trained ([0-9.]+)", "mass_random": r"random weights ([0-9.]+)",
           "lesion_area": r"lesion area ([0-9.]+)", "empty_share": r"no positive evidence ([0-9.]+)",
           "ece_uncalibrated": r"test ECE ([0-9.]+) ->", "ece": r"test ECE [0-9.]+ -> ([0-9.]+)",
           "temperature": r"temperature ([0-9.]+):", "val_ece_uncalibrated": r"val ECE ([0-9.]+) ->",
           "val_ece": r"val ECE [0-9.]+ -> ([0-9.]+)", "val_log_loss_uncalibrated": r"val log-loss ([0-9.]+) ->",
           "val_log_loss": r"val log-loss [0-9.]+ -> ([0-9.]+)"}


def spread(args) -> None:
    rows = []
    for seed in args.seeds.split(","):
        env = {**os.environ, "LESIONSPARK_QUALITY_SEED": seed}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-n", "0", "-p", "no:cacheprovider",
                               "tests/test_quality.py"], cwd=REPO, env=env, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        row = {"seed": int(seed), "passed": proc.returncode == 0}
        for key, pattern in FIGURES.items():
            m = re.search(pattern, out)
            row[key] = float(m.group(1)) if m else None
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = list(FIGURES)
    print("\n| seed | passed | " + " | ".join(keys) + " |")
    print("| ---: | --- | " + " | ".join("---:" for _ in keys) + " |")
    for r in rows:
        print(f"| {r['seed']} | {r['passed']} | " + " | ".join("n/a" if r[k] is None else f"{r[k]:.3f}" for k in keys) + " |")
    for k in keys:
        vals = [r[k] for r in rows if r[k] is not None]
        if vals:
            print(f"{k}: min {min(vals):.3f} median {float(np.median(vals)):.3f} max {max(vals):.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("methods")
    m.add_argument("--workdir")
    m.add_argument("--reuse", action="store_true", help="reuse the data and trained models in --workdir")
    m.add_argument("--variants", default="cnn_flatten,cnn_gap")
    m.add_argument("--n-images", type=int, default=700)
    m.add_argument("--seed", type=int, default=11)
    m.add_argument("--size", type=int, default=64)
    m.add_argument("--epochs", type=int, default=6)
    m.add_argument("--samples", type=int, default=1200)
    s = sub.add_parser("spread")
    s.add_argument("--seeds", default="0,1,2,3,4")
    args = ap.parse_args()
    (methods if args.cmd == "methods" else spread)(args)


if __name__ == "__main__":
    main()
