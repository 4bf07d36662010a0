"""Why demo-sized models collapse or swing, measured: one training run per variant on the demo's data.

The demo's data and budget (GENERATED images: `lesionspark synth` 1,000 + the 56 genuine, seed 0,
64 px, lesion-grouped splits; 2 Horovod workers, the demo's budget from `demo.*`: 8 epochs x 1,600
samples when the figures in docs/benchmarks.md were taken, 1,280 since; batch 32 a worker).
Per variant: test balanced accuracy and accuracy of the saved (best-on-val) model in inference mode;
the same with batch-norm in training mode (batch statistics: if this is much better, the moving
statistics are what broke inference); the largest share of distinct test images that get one
identical output (collapse); val accuracy epoch by epoch and its mean swing |Δ| from epoch 3 on.

    .venv/bin/python benchmarks/stability.py --workdir /tmp/stab
    .venv/bin/python benchmarks/stability.py --workdir /tmp/stab --reuse --variants smote_pbn,none_pbn
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BEFORE = {"train.bn_batches": 0, "train.lr_scaling": "linear", "train.schedule": "plateau",
          "model.params": {"bn_momentum": 0.9, "head": "flatten"}}  # the older recipe: batch-norm momentum 0.9, a Flatten head
FIX = {"train.bn_batches": 20, "train.lr_scaling": "none", "train.schedule": "cosine"}
VARIANTS = {
    "smote_base": {**BEFORE, "train.balance": "smote"},
    "smote_bn_momentum_0.99": {**BEFORE, "train.balance": "smote", "model.params": {"bn_momentum": 0.99}},
    "smote_lr_unscaled": {**BEFORE, "train.balance": "smote", "train.lr_scaling": "none"},
    "smote_gap_head": {**BEFORE, "train.balance": "smote", "model.params": {"head": "gap"}},
    "smote_no_batchnorm": {**BEFORE, "train.balance": "smote", "model.params": {"batchnorm": False}},
    "smote_precise_bn": {**BEFORE, "train.balance": "smote", "train.bn_batches": 20},
    "smote_precise_bn_lr_unscaled": {**BEFORE, "train.balance": "smote", "train.bn_batches": 20,
                                     "train.lr_scaling": "none"},
    "none_precise_bn_lr_unscaled": {**BEFORE, "train.balance": "none", "train.bn_batches": 20,
                                    "train.lr_scaling": "none"},
    "smote_fix": {**BEFORE, **FIX, "train.balance": "smote"},
    "none_fix": {**BEFORE, **FIX, "train.balance": "none"},
    "weights_fix": {**BEFORE, **FIX, "train.balance": "weights"},
}


def main():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir")
    ap.add_argument("--reuse", action="store_true", help="reuse the ingested and balanced data in --workdir")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    from lesionspark.core.progress import setup_logging
    setup_logging("WARN")
    import tensorflow as tf
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from lesionspark.balance.driver import balance
    from lesionspark.core.config import Config
    from lesionspark.ingest.driver import ingest
    from measures import largest_identical_group
    from lesionspark.modeling.models import preprocess
    from lesionspark.store.spark import get_spark
    from lesionspark.imaging.synth import synth
    from lesionspark.train.driver import train
    from lesionspark.train.executor import load_split
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lesionspark-bench-stability-"))
    root = work / "root"
    demo = Config.load().get("demo")
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false"]) \
        .with_overrides({"storage.root": str(root), "dataset.image_size": demo["image_size"],
                         "train.epochs": demo["epochs"], "train.num_proc": demo["num_proc"],
                         "train.samples_per_epoch": demo["samples_per_epoch"], "train.horovod_verbose": 0})
    spark = get_spark(cfg)
    if not (args.reuse and (root / "datasets" / "ham10000" / "manifest.json").exists()):
        made = synth(str(work / "raw"), n_images=demo["n_images"], seed=0, with_genuine=True, progress=False)
        cfg = cfg.with_overrides({"ingest.metadata": made["metadata"], "ingest.images": made["images"]})
        ingest(spark, cfg)
        balance(spark, cfg.with_overrides({"balance.method": "smote"}))
    x, y, _ = load_split(f"file://{root}/datasets/ham10000/test", "label")
    rows = []
    for name in args.variants.split(","):
        card = train(spark, cfg.with_overrides({**VARIANTS[name], "model.name": name}))
        model_dir = root / "models" / name / card["version"]
        model = tf.keras.models.load_model(model_dir / "model.keras", compile=False)
        xp = preprocess(card["preprocessing"], x.astype(np.float32))
        p = model.predict(xp, verbose=0)
        pb = np.concatenate([model(xp[i:i + 64], training=True).numpy() for i in range(0, len(x), 64)])
        val = json.loads((model_dir / "history.json").read_text()).get("val_accuracy", [])
        row = {"variant": name, "test_balanced_accuracy": balanced_accuracy_score(y, p.argmax(1)),
               "test_accuracy": accuracy_score(y, p.argmax(1)),
               "test_balanced_accuracy_batch_stats": balanced_accuracy_score(y, pb.argmax(1)),
               "largest_identical_share": largest_identical_group(p) / len(p), "val_accuracy": [round(v, 2) for v in val],
               "val_swing": float(np.mean(np.abs(np.diff(val[2:])))) if len(val) > 3 else None,
               "epochs_run": card["epochs_run"], "train_seconds": card["train_seconds"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    spark.stop()
    print(f"\nGENERATED demo data, test n={len(y)}\n")
    print("| variant | test bal. acc | test acc | bal. acc, BN batch stats | largest identical-output share | "
          "val acc by epoch | mean val swing (ep. 3+) |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        swing = f"{r['val_swing']:.3f}" if r["val_swing"] is not None else "n/a"
        print(f"| {r['variant']} | {r['test_balanced_accuracy']:.3f} | {r['test_accuracy']:.3f} | "
              f"{r['test_balanced_accuracy_batch_stats']:.3f} | {r['largest_identical_share']:.3f} | "
              f"{' '.join(f'{v:.2f}' for v in r['val_accuracy'])} | {swing} |")


if __name__ == "__main__":
    main()
