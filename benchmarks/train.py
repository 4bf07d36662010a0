"""Training throughput and quality.

  throughput  CNN at 64 px, samples/s in steady state (first epoch excluded, validation excluded):
              (a) one process, in-memory tensors, 1 compute thread
              (b) one Horovod worker reading Petastorm, 1 thread
              (c) two Horovod workers, 1 thread each (2 cores)
              (d) one Horovod worker, 2 threads
              and ResNet50 (frozen, weights=None) at 128 px for (b) and (c).
              Data: 2,000 GENERATED images (lesionspark synth) ingested at 64 and 128 px.
  quality     recipes and architectures at HAM10000's class structure: synth all 10,015 genuine
              metadata rows (GENERATED images), ingest at 64 px with lesion-grouped splits; the CNN
              with none / class weights / oversampling / SMOTE / focal loss + weights, then ResNet50
              (finetune, random init) and EfficientNetB0 (random init) with the recipe best on val;
              each on 2 Horovod workers at the same budget (epochs x samples per epoch). Test
              balanced accuracy and macro F1 with lesion-bootstrap 95% intervals; mel/bcc/akiec recall.

  --metadata  (quality) each CNN recipe twice at the same budget: image only, and fused with the
              genuine age, sex and site (model.metadata); the paired lesion-bootstrap interval of
              the difference in test balanced accuracy and macro F1 (same test images, same resamples).

    .venv/bin/python benchmarks/train.py throughput
    .venv/bin/python benchmarks/train.py quality --workdir /tmp/lsq --reuse
    .venv/bin/python benchmarks/train.py quality --workdir /tmp/lsq --reuse --recipes class_weights --archs '' --metadata
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


def in_memory_child(url: str, size: int, epochs: int, batch: int, threads: int, steps: int) -> None:
    from lesionspark.core.threads import limit_threads
    limit_threads(threads)
    import numpy as np
    import tensorflow as tf
    from lesionspark.modeling.models import build, preprocess
    from lesionspark.train.executor import load_split
    x, y, _ = load_split(url, "label")
    x = preprocess("scale_0_1", x.astype(np.float32)).numpy()
    y = tf.one_hot(y, 7).numpy()
    model = build("cnn", size, 7)
    model.compile(tf.keras.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    times = []

    class Clock(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, e, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, e, logs=None):
            times.append(time.perf_counter() - self.t)

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(512).repeat().batch(batch).prefetch(2)
    model.fit(ds, steps_per_epoch=steps, epochs=epochs, verbose=0, callbacks=[Clock()])
    print(json.dumps({"samples_per_s": steps * batch * (epochs - 1) / sum(times[1:])}))


def _cfg(root, **over):
    from lesionspark.core.config import Config
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false"])
    return cfg.with_overrides({"storage.root": str(root), **over})


def throughput(args):
    from lesionspark.ingest.driver import ingest
    from lesionspark.store.spark import get_spark
    from lesionspark.imaging.synth import synth
    from lesionspark.train.driver import train
    work = Path(tempfile.mkdtemp(prefix="lesionspark-bench-train-"))
    made = synth(str(work / "raw"), n_images=args.n_images, seed=5, with_genuine=False, progress=False)
    spark = get_spark(_cfg(work))
    base = {"ingest.metadata": made["metadata"], "ingest.images": made["images"]}
    for size in (64, 128):
        ingest(spark, _cfg(work, **base, **{"dataset.image_size": size, "dataset.name": f"g{size}",
                                            "ingest.rowgroup_size_mb": 1}))
    results = {}
    common = {"train.balance": "none", "train.horovod_verbose": 0, "train.warmup_epochs": 0, "train.bn_batches": 0,
              "train.augment": {"enabled": False}, "train.patience": 100, "train.batch_size": args.batch}

    def run(label, size, arch, num_proc, threads, samples, epochs, **extra):
        key = next(k for k in ("b_aug", "c_fp16", "c_bpps2", "resnet50", "a", "b", "c", "d") if label.startswith(k + "_"))
        if key not in only:
            return
        card = train(spark, _cfg(work, **{**common, **extra,
            "dataset.name": f"g{size}", "model.arch": arch, "model.name": f"{arch}-{label}",
            "train.num_proc": num_proc, "train.threads_per_worker": threads,
            "train.samples_per_epoch": samples, "train.epochs": epochs}))
        results[label] = card["ranks"][0]["samples_per_s"]
        print(f"{label}: {results[label]:.1f} samples/s ({card['sharding']} sharding)", flush=True)

    samples = args.samples
    only = set(args.only.split(","))
    if "a" in only:
        child = subprocess.run([sys.executable, __file__, "in-memory-child", f"file://{work}/datasets/g64/train",
                            "64", str(args.epochs), str(args.batch), "1", str(samples // args.batch)],
                               capture_output=True, text=True)
        results["a_in_memory_1_thread"] = json.loads(child.stdout.strip().splitlines()[-1])["samples_per_s"]
        print(f"a: {results['a_in_memory_1_thread']:.1f} samples/s", flush=True)
    run("b_1_worker_1_thread", 64, "cnn", 1, 1, samples, args.epochs)
    run("b_aug_1_worker_1_thread_augmented", 64, "cnn", 1, 1, samples, args.epochs,
        **{"train.augment": {"enabled": True, "rotation": 0.1, "contrast": 0.1, "brightness": 0.1}})
    run("c_2_workers_1_thread", 64, "cnn", 2, 1, samples, args.epochs)
    run("d_1_worker_2_threads", 64, "cnn", 1, 2, samples, args.epochs)
    run("c_fp16_2_workers_fp16_allreduce", 64, "cnn", 2, 1, samples, args.epochs, **{"train.compression": "fp16"})
    run("c_bpps2_2_workers_allreduce_every_2", 64, "cnn", 2, 1, samples, args.epochs,
        **{"train.backward_passes_per_step": 2})
    run("resnet50_128_b_1_worker", 128, "resnet50", 1, 1, args.resnet_samples, 3)
    run("resnet50_128_c_2_workers", 128, "resnet50", 2, 1, args.resnet_samples, 3)
    spark.stop()
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))
    r = results
    if {"b_aug_1_worker_1_thread_augmented", "a_in_memory_1_thread"} <= set(r):
        print("augmented Petastorm / in-memory unaugmented: b_aug/a %.2f (target >= 0.9)"
              % (r["b_aug_1_worker_1_thread_augmented"] / r["a_in_memory_1_thread"]))
    if not {"a_in_memory_1_thread", "b_1_worker_1_thread", "c_2_workers_1_thread", "d_1_worker_2_threads",
            "resnet50_128_b_1_worker", "resnet50_128_c_2_workers"} <= set(r):
        return
    print("\nratios: b/a %.2f (target >= 0.9), c/b %.2f (target >= 1.6), c/d %.2f (target > 1), "
          "resnet50 c/b %.2f" % (r["b_1_worker_1_thread"] / r["a_in_memory_1_thread"],
                                 r["c_2_workers_1_thread"] / r["b_1_worker_1_thread"],
                                 r["c_2_workers_1_thread"] / r["d_1_worker_2_threads"],
                                 r["resnet50_128_c_2_workers"] / r["resnet50_128_b_1_worker"]))


RECIPES = {  # label: (training data, overrides)
    "none": ("none", {}),
    "class_weights": ("weights", {}),
    "oversample": ("oversample", {}),
    "smote": ("smote", {}),
    "focal_weights": ("weights", {"train.loss": "focal"}),
}
ARCHS = {  # label: (model.arch, model.params); weights=None everywhere (no network here)
    "cnn": ("cnn", {}),
    "resnet50_finetune_random_init": ("resnet50", {"mode": "finetune"}),
    "efficientnetb0_random_init": ("efficientnet", {"variant": "B0", "mode": "finetune"}),
}


def _quality_data(args, work: Path):
    if args.reuse and (work / "raw" / "HAM10000_metadata.csv").exists():  # synth is deterministic
        from lesionspark.imaging.synth import genuine_image_ids
        import pandas as pd
        meta = pd.read_csv(work / "raw" / "HAM10000_metadata.csv")
        genuine = int(meta.image_id.isin(genuine_image_ids()).sum())
        return {"metadata": str(work / "raw" / "HAM10000_metadata.csv"), "genuine": genuine,
                "images": [str(work / "raw" / "images_generated"), str(work / "raw" / "images_genuine")],
                "generated": len(meta) - genuine}
    from lesionspark.imaging.synth import synth
    return synth(str(work / "raw"), n_images=20000, seed=1, with_genuine=True, progress=False)


def _test_metrics(spark, cfg, card) -> dict:
    """Through `evaluate` (temperature fitted on val): test balanced accuracy and macro F1 with
    lesion-bootstrap 95% intervals; recall of mel/bcc/akiec; ECE before and after calibration, AUC."""
    import pyarrow.parquet as pq
    from lesionspark.store import storage
    from lesionspark.evaluate.driver import evaluate, metrics_file
    root = storage.normalize_uri(cfg.get("storage.root"))
    summary = evaluate(spark, cfg.with_overrides({"evaluate.model": f"{card['name']}:{card['version']}"}))
    t = summary["splits"]["test"]
    rows = pq.read_table(metrics_file(root, card["name"], card["version"], card["dataset"], "test")[len("file://"):]) \
        .to_pandas()
    recall = rows[rows["metric"] == "recall"].set_index("class")["value"]
    return {"n": t["n_images"], "balanced_accuracy": t["balanced_accuracy"], "bal_ci": t["ci"]["balanced_accuracy"],
            "macro_f1": t["macro_f1"], "f1_ci": t["ci"]["macro_f1"], "macro_auc": t["macro_auc"],
            "ece_uncalibrated": t["ece_uncalibrated"], "ece": t["ece"], "temperature": summary["temperature"],
            **{f"recall_{c}": float(recall[c]) for c in ("mel", "bcc", "akiec")}}


def paired_difference(root: Path, card_a: dict, card_b: dict, n_boot: int, seed: int = 0) -> dict:
    """B minus A on the same test images: balanced accuracy and macro F1, with the percentile interval
    of the difference over lesion resamples drawn once for both (``metrics.bootstrap_ci``'s method)."""
    import numpy as np
    import pandas as pd
    from lesionspark.modeling.metrics import confusion_scores
    frames = [pd.read_parquet(root / "reports" / c["name"] / c["version"] / "predictions_test.parquet")
              .sort_values("image_id", ignore_index=True) for c in (card_a, card_b)]
    assert (frames[0]["image_id"] == frames[1]["image_id"]).all()
    k = len(card_a["classes"])
    _, groups = np.unique(frames[0]["lesion_id"], return_inverse=True)
    n = int(groups.max()) + 1
    cells = np.zeros((n, 2, k * k))
    for j, f in enumerate(frames):
        np.add.at(cells[:, j], (groups, f["label"].to_numpy() * k + f["predicted_label"].to_numpy().astype(int)), 1)
    point = [confusion_scores(cells[:, j].sum(0).reshape(1, k, k)) for j in (0, 1)]
    rng = np.random.default_rng(seed)
    drawn = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
    out = {}
    for metric in ("balanced_accuracy", "macro_f1"):
        diff = [confusion_scores((drawn @ cells[:, j]).reshape(n_boot, k, k))[metric] for j in (0, 1)]
        delta = diff[1] - diff[0]
        out[metric] = {"a": float(point[0][metric][0]), "b": float(point[1][metric][0]),
                       "difference": float(point[1][metric][0] - point[0][metric][0]),
                       "ci": [float(np.percentile(delta, 2.5)), float(np.percentile(delta, 97.5))]}
    return out


def without_metadata(root: Path, card: dict) -> float:
    """Test balanced accuracy of a metadata model when every image comes without metadata (a JPEG
    archive with no side-car): the missing category for every field."""
    from sklearn.metrics import balanced_accuracy_score
    from lesionspark.dataset.clinical import encode
    from lesionspark.inference.predictor import load_model, predict_arrays
    from lesionspark.store.registry import resolve_model
    from lesionspark.train.executor import load_split
    card, model_uri = resolve_model(f"file://{root}", f"{card['name']}:{card['version']}")
    x, y, _ = load_split(f"file://{root}/datasets/ham10000/test", "label")
    blank = encode(card["metadata"], [{}] * len(x))[0]
    probs = predict_arrays(load_model(model_uri), card, x, 64, blank)
    return float(balanced_accuracy_score(y, probs.argmax(1)))


def quality(args):
    """Recipes on the CNN, then the other architectures with the recipe that did best on VAL."""
    from lesionspark.store import storage
    from lesionspark.store.layout import Layout
    from lesionspark.balance.driver import balance
    from lesionspark.ingest.driver import ingest
    from lesionspark.store.spark import get_spark
    from lesionspark.train.driver import train
    work = Path(args.workdir or tempfile.mkdtemp(prefix="lesionspark-bench-quality-"))
    t = time.perf_counter()
    made = _quality_data(args, work)
    print(f"synth: {made['generated']} GENERATED + {made['genuine']} genuine in {time.perf_counter() - t:.0f}s",
          flush=True)
    cfg = _cfg(work, **{"ingest.metadata": made["metadata"], "ingest.images": made["images"],
                        "dataset.image_size": 64, "ingest.rowgroup_size_mb": 4, "evaluate.bootstrap": args.bootstrap})
    spark = get_spark(cfg)
    layout = Layout(str(work))
    if args.reuse and storage.exists(layout.manifest("ham10000")):  # --reuse: the ingested data too
        manifest = storage.read_json(layout.manifest("ham10000"))
    else:
        manifest = ingest(spark, cfg)
    n_train = manifest["counts"]["by_split"]["train"]["total"]
    print(f"ingest: {manifest['counts']['written']} written, train {n_train}", flush=True)
    recipes = [r for r in args.recipes.split(",") if r]
    for method in {RECIPES[r][0] for r in recipes} & {"smote", "oversample"}:
        if not (args.reuse and storage.exists(layout.balanced("ham10000", method) + "/counts.json")):
            balance(spark, cfg.with_overrides({"balance.method": method}))
    if not recipes and not (args.archs and args.arch_recipe):
        return spark.stop()
    budget = {"train.epochs": args.epochs, "train.num_proc": 2, "train.samples_per_epoch": args.samples,
              "train.patience": args.epochs, "train.horovod_verbose": 0, "train.seed": args.seed}
    out = {}

    cards = {}

    def run(label, arch_label, recipe, metadata=()):
        arch, params = ARCHS[arch_label]
        data, extra = RECIPES[recipe]
        t = time.perf_counter()
        card = train(spark, cfg.with_overrides({**budget, **extra, "train.balance": data, "model.arch": arch,
                                                "model.params": params, "model.name": label,
                                                "model.metadata": list(metadata)}))
        cards[label] = card
        out[label] = {"arch": arch_label + ("+metadata" if metadata else ""), "recipe": recipe,
                      "val_balanced_accuracy": card["metrics"]["val"]["balanced_accuracy"],
                      "best_epoch": (card["best"] or {}).get("epoch"), "train_seconds": round(time.perf_counter() - t),
                      "test": _test_metrics(spark, cfg, card)}
        print(label, json.dumps(out[label]), flush=True)

    for recipe in recipes:
        run(f"cnn-{recipe}", "cnn", recipe)
        if args.metadata:
            run(f"cnn-{recipe}-metadata", "cnn", recipe, ("age", "sex", "localization"))
            d = paired_difference(work, cards[f"cnn-{recipe}"], cards[f"cnn-{recipe}-metadata"], args.bootstrap)
            print(f"metadata minus image only ({recipe}):", json.dumps(d), flush=True)
            print(f"metadata model, every image without metadata ({recipe}): test balanced accuracy "
                  f"{without_metadata(work, cards[f'cnn-{recipe}-metadata']):.3f}", flush=True)
    best = args.arch_recipe or max((r for r in out.values() if r["arch"] == "cnn"),
                                   key=lambda r: r["val_balanced_accuracy"])["recipe"]
    print(f"recipe for the architectures: {best}" + ("" if args.arch_recipe else " (best CNN recipe on val)"), flush=True)
    for arch_label in [a for a in args.archs.split(",") if a]:
        run(f"{arch_label}-{best}", arch_label, best)
    spark.stop()
    test_n = next(iter(out.values()))['test']['n']
    print(f"\nGENERATED images at 64 px ({manifest['counts']['written']} written; test n={test_n}); "
          f"2 Horovod workers; {args.epochs} epochs x {args.samples} samples each; best epoch on val macro recall.\n")
    print("| model | recipe | test balanced accuracy [95% CI] | test macro F1 [95% CI] | recall mel | recall bcc | "
          "recall akiec | macro AUC | test ECE uncalibrated -> calibrated (T) | val balanced accuracy | train s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    for label, r in out.items():
        m = r["test"]
        print(f"| {r['arch']} | {r['recipe']} | {m['balanced_accuracy']:.3f} [{m['bal_ci'][0]:.3f}, {m['bal_ci'][1]:.3f}] | "
              f"{m['macro_f1']:.3f} [{m['f1_ci'][0]:.3f}, {m['f1_ci'][1]:.3f}] | {m['recall_mel']:.3f} | "
              f"{m['recall_bcc']:.3f} | {m['recall_akiec']:.3f} | {m['macro_auc']:.3f} | "
              f"{m['ece_uncalibrated']:.3f} -> {m['ece']:.3f} ({m['temperature']:.2f}) | "
              f"{r['val_balanced_accuracy']:.3f} | {r['train_seconds']} |")


def main():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if sys.argv[1:2] == ["in-memory-child"]:
        a = sys.argv[2:]
        return in_memory_child(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]))
    from lesionspark.core.progress import setup_logging
    setup_logging("INFO")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--n-images", type=int, default=2000)
    t.add_argument("--samples", type=int, default=2048, help="samples per epoch")
    t.add_argument("--resnet-samples", type=int, default=192)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--only", default="a,b,b_aug,c,d,resnet50",
                   help="comma list of runs: a, b, c, d, c_fp16, c_bpps2, resnet50")
    q = sub.add_parser("quality")
    q.add_argument("--epochs", type=int, default=5)
    q.add_argument("--samples", type=int, default=3000, help="samples per epoch (the same budget for every model)")
    q.add_argument("--recipes", default=",".join(RECIPES))
    q.add_argument("--archs", default="resnet50_finetune_random_init,efficientnetb0_random_init",
                   help="architectures trained with the best CNN recipe")
    q.add_argument("--arch-recipe", choices=list(RECIPES),
                   help="train the architectures with this recipe instead of the best CNN one of this run "
                        "(with --recipes '' only the architectures are trained)")
    q.add_argument("--bootstrap", type=int, default=500)
    q.add_argument("--seed", type=int, default=0, help="train.seed of every model")
    q.add_argument("--metadata", action="store_true",
                   help="each CNN recipe also with model.metadata [age, sex, localization]; the paired difference")
    q.add_argument("--workdir")
    q.add_argument("--reuse", action="store_true",
                   help="reuse the generated images, the ingested dataset and balanced data already in --workdir")
    args = ap.parse_args()
    throughput(args) if args.what == "throughput" else quality(args)


if __name__ == "__main__":
    main()
