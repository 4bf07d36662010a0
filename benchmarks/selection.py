"""Which weights a training run should keep, judged on unseen images: selection rules compared over
seeds, and a decision rule that gives back accuracy.

    .venv/bin/python benchmarks/selection.py demo --seeds 0 1 2 3 4 --workdir /tmp/sel-demo
    .venv/bin/python benchmarks/selection.py quality --seeds 0 1 2 --workdir /tmp/sel-quality
    .venv/bin/python benchmarks/selection.py demo --seeds 0 1 2 3 4 --workdir /tmp/sel-demo --as-configured

Data (GENERATED images, plus the 56 genuine JPEGs):
  demo     the demo's: ``lesionspark synth`` 1,000 images (seed 0) at 64 px, its budget (8 epochs x
           1,280 samples, 2 Horovod workers), class weights: ``cnn_weights``, the demo's headline.
  quality  the HAM10000 structure: all genuine metadata rows (9,965) at 64 px, 6 epochs x 1,250
           samples (the quality benchmark's 7,500 samples over more epochs), class weights.

Per seed, one training run with the default recipe (cosine schedule, PreciseBN), no early stopping
and every epoch's weights kept (``train.keep_epoch_weights``). Then, with those weights, each rule
picks a model and the model is scored on val and test:

  monitor   the epoch with the highest val balanced accuracy (``train.monitor``, today's default)
  val_loss  the lowest val loss, class-weighted as training is
  val_auc   the highest val macro AUC (one-vs-rest)
  last      the last epoch of the cosine schedule, no pick
  swa       the mean of the last 3 epochs' weights, batch-norm statistics recomputed on 20
            training batches (PreciseBN), as stochastic weight averaging does

For each: test balanced accuracy, macro F1 and accuracy; val balanced accuracy; the val-to-test gap.
``--as-configured``: instead, one run per seed as training is configured (``train.select`` and the
rest of ``default.yaml``, early stopping included), its model card's val and test figures.
Then per rule the decision rule: probabilities calibrated on val (temperature, ECE), multiplied by
the training prior to the power alpha (prior correction; alpha 0 is the argmax), alpha chosen on val
as the largest accuracy whose balanced accuracy stays within 0.02 of alpha 0's. Nothing is chosen on test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RULES = ("monitor", "val_loss", "val_auc", "last", "swa")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
BUDGETS = {"demo": {"train.epochs": 8, "train.samples_per_epoch": 1280},
           "quality": {"train.epochs": 6, "train.samples_per_epoch": 1250}}


def prepare(kind: str, work: Path):
    """(spark, cfg) with the data synthesised and ingested once into ``work`` (reused when there)."""
    from lesionspark.core.config import Config
    from lesionspark.imaging.synth import synth
    from lesionspark.ingest.driver import ingest
    from lesionspark.store import storage
    from lesionspark.store.layout import Layout
    from lesionspark.store.spark import get_spark
    n, seed = (1000, 0) if kind == "demo" else (20000, 1)
    made = synth(str(work / "raw"), n_images=n, seed=seed, with_genuine=True, progress=False)
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false"])
    cfg = cfg.with_overrides({"storage.root": str(work / "root"), "ingest.metadata": made["metadata"],
                              "ingest.images": made["images"], "dataset.image_size": 64,
                              "balance.method": "weights", "train.num_proc": 2, "train.horovod_verbose": 0,
                              "train.keep_epoch_weights": True, **BUDGETS[kind]})
    cfg = cfg.with_overrides({"train.patience": cfg.get("train.epochs")})  # every epoch runs
    spark = get_spark(cfg)
    if not storage.exists(Layout(str(work / "root")).manifest("ham10000")):
        ingest(spark, cfg)
    return spark, cfg


def scores(model, x, batch: int = 256) -> np.ndarray:
    from lesionspark.modeling.models import preprocess
    return np.concatenate([model.predict(preprocess("scale_0_1", x[i:i + batch].astype(np.float32)), verbose=0)
                           for i in range(0, len(x), batch)])


def figures(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
    pred = p.argmax(1)
    present = np.unique(y)
    auc = roc_auc_score(y, p[:, present] / p[:, present].sum(1, keepdims=True), multi_class="ovr",
                        labels=present) if len(present) > 2 else float("nan")
    loss = -np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1)) * weights[y]
    return {"balanced_accuracy": balanced_accuracy_score(y, pred), "accuracy": accuracy_score(y, pred),
            "macro_f1": f1_score(y, pred, average="macro", labels=present), "macro_auc": auc,
            "weighted_loss": float(loss.sum() / weights[y].sum())}


def swa_model(model, paths: list, x_train: np.ndarray, batches: int = 20, batch: int = 32):
    """The mean of ``paths``' weights, then PreciseBN's batch-norm statistics on training batches."""
    import tensorflow as tf
    from lesionspark.modeling.models import preprocess
    from lesionspark.train.callbacks import PreciseBatchNorm
    sets = []
    for p in paths:
        model.load_weights(p)
        sets.append([w.numpy() for w in model.weights])
    model.set_weights([np.mean(ws, axis=0) for ws in zip(*sets)])
    rng = np.random.default_rng(0)
    sample = [tf.constant(preprocess("scale_0_1", x_train[rng.choice(len(x_train), batch)].astype(np.float32)))
              for _ in range(batches)]
    PreciseBatchNorm(model, batches, lambda n: sample[:n]).recompute()
    return model


def decision(val: tuple, test: tuple, prior: np.ndarray) -> dict:
    """Prior correction on temperature-calibrated probabilities: test figures at alpha 0, 1 and the
    alpha chosen on val (largest val accuracy with val balanced accuracy within 0.02 of alpha 0's)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from lesionspark.modeling.calibration import fit_temperature
    (yv, pv), (yt, pt) = val, test
    t = fit_temperature(yv, pv, "ece", 15)

    def calibrated(p, alpha):
        logits = np.log(np.clip(p, 1e-12, 1)) / t + alpha * np.log(prior)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def both(y, p, alpha):
        pred = calibrated(p, alpha).argmax(1)
        return balanced_accuracy_score(y, pred), accuracy_score(y, pred)
    base = both(yv, pv, 0.0)[0]
    chosen = max((a for a in ALPHAS if both(yv, pv, a)[0] >= base - 0.02), key=lambda a: (both(yv, pv, a)[1], -a))
    return {f"alpha_{a}": dict(zip(("balanced_accuracy", "accuracy"), both(yt, pt, a))) for a in (0.0, 1.0, chosen)} \
        | {"alpha_chosen_on_val": chosen, "temperature": t}


def one_seed(spark, cfg, seed: int) -> dict:
    from lesionspark.core.classes import CLASSES
    from lesionspark.modeling.models import build
    from lesionspark.store.layout import Layout
    from lesionspark.train.driver import train
    from lesionspark.train.executor import load_split
    from lesionspark.train.spec import epoch_weights
    card = train(spark, cfg.with_overrides({"train.seed": seed, "model.name": f"sel-{seed}"}), run_id=f"sel-{seed}")
    layout = Layout(cfg.get("storage.root"))
    run_dir = Path(layout.run(f"sel-{seed}")[len("file://"):])
    epochs = card["epochs_run"]
    (xv, yv, _), (xt, yt, _) = (load_split(layout.split("ham10000", s), "label") for s in ("val", "test"))
    x_train, _, _ = load_split(layout.split("ham10000", "train"), "label")
    counts = np.array([card["train_counts"].get(c, 0) for c in CLASSES], float)
    weights = np.array([float((card["hyperparameters"].get("class_weight") or {}).get(str(i), 1.0))
                        for i in range(len(CLASSES))])
    model = build(card["architecture"], card["image_size"], len(CLASSES), card["model_params"])
    per_epoch, probs = [], {}
    for k in range(1, epochs + 1):
        model.load_weights(str(run_dir / epoch_weights(k)))
        probs[k] = (scores(model, xv), scores(model, xt))
        per_epoch.append({"epoch": k, "val": figures(yv, probs[k][0], weights), "test": figures(yt, probs[k][1], weights)})
    pick = {"monitor": max(range(epochs), key=lambda i: per_epoch[i]["val"]["balanced_accuracy"]) + 1,
            "val_loss": min(range(epochs), key=lambda i: per_epoch[i]["val"]["weighted_loss"]) + 1,
            "val_auc": max(range(epochs), key=lambda i: per_epoch[i]["val"]["macro_auc"]) + 1,
            "last": epochs}
    out = {}
    for rule, k in pick.items():
        out[rule] = {"epoch": k, "val": per_epoch[k - 1]["val"], "test": per_epoch[k - 1]["test"],
                     "decision": decision((yv, probs[k][0]), (yt, probs[k][1]), counts / counts.sum())}
    swa = swa_model(model, [str(run_dir / epoch_weights(k)) for k in range(max(1, epochs - 2), epochs + 1)], x_train)
    pv, pt = scores(swa, xv), scores(swa, xt)
    out["swa"] = {"epoch": f"{max(1, epochs - 2)}-{epochs}", "val": figures(yv, pv, weights),
                  "test": figures(yt, pt, weights), "decision": decision((yv, pv), (yt, pt), counts / counts.sum())}
    for r in out.values():
        r["gap"] = r["val"]["balanced_accuracy"] - r["test"]["balanced_accuracy"]
    return {"seed": seed, "val_n": int(len(yv)), "test_n": int(len(yt)), "per_epoch": per_epoch, "rules": out}


def as_configured(spark, cfg, seed: int) -> dict:
    """One training run as configured (no kept epochs, early stopping as configured): its card's figures."""
    from lesionspark.core.config import Config
    from lesionspark.train.driver import train
    defaults = Config.load()
    card = train(spark, cfg.with_overrides({"train.seed": seed, "model.name": f"conf-{seed}",
                                            "train.keep_epoch_weights": False,
                                            "train.patience": defaults.get("train.patience")}), run_id=f"conf-{seed}")
    return {"seed": seed, "selection": card["selection"], "val": card["metrics"]["val"], "test": card["metrics"]["test"]}


def table(results: list) -> str:
    """Per rule: mean (sd) over seeds of the test figures and the val-to-test gap, then each seed's
    test balanced accuracy."""
    def ms(values):
        return f"{statistics.mean(values):.3f} ({statistics.stdev(values) if len(values) > 1 else 0:.3f})"
    lines = ["| rule | test balanced accuracy | test macro F1 | test accuracy | val-to-test gap | by seed |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for rule in RULES:
        rows = [r["rules"][rule] for r in results]
        lines.append(f"| {rule} | {ms([x['test']['balanced_accuracy'] for x in rows])} | "
                     f"{ms([x['test']['macro_f1'] for x in rows])} | {ms([x['test']['accuracy'] for x in rows])} | "
                     f"{ms([x['gap'] for x in rows])} | "
                     + ", ".join(f"{x['test']['balanced_accuracy']:.3f}" for x in rows) + " |")
    lines += ["", "| rule | argmax: bal. acc / acc | prior (alpha 1): bal. acc / acc | "
              "alpha chosen on val: bal. acc / acc | alphas chosen |", "| --- | --- | --- | --- | --- |"]
    for rule in RULES:
        d = [r["rules"][rule]["decision"] for r in results]
        chosen = [x[f"alpha_{x['alpha_chosen_on_val']}"] for x in d]
        lines.append(f"| {rule} | {ms([x['alpha_0.0']['balanced_accuracy'] for x in d])} / "
                     f"{ms([x['alpha_0.0']['accuracy'] for x in d])} | {ms([x['alpha_1.0']['balanced_accuracy'] for x in d])} / "
                     f"{ms([x['alpha_1.0']['accuracy'] for x in d])} | {ms([x['balanced_accuracy'] for x in chosen])} / "
                     f"{ms([x['accuracy'] for x in chosen])} | "
                     + ", ".join(str(x["alpha_chosen_on_val"]) for x in d) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=sorted(BUDGETS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workdir")
    ap.add_argument("--as-configured", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix=f"lesionspark-selection-{args.kind}-"))
    spark, cfg = prepare(args.kind, work)
    if args.as_configured:
        runs = [as_configured(spark, cfg, seed) for seed in args.seeds]
        for r in runs:
            print(f"seed {r['seed']}: {r['selection']}: test balanced accuracy {r['test']['balanced_accuracy']:.3f}, "
                  f"accuracy {r['test']['accuracy']:.3f}, macro F1 {r['test']['macro_f1']:.3f}; "
                  f"val balanced accuracy {r['val']['balanced_accuracy']:.3f}", flush=True)
        bal = [r["test"]["balanced_accuracy"] for r in runs]
        print(f"test balanced accuracy over {len(bal)} seeds: mean {statistics.mean(bal):.3f}, "
              f"sd {statistics.stdev(bal) if len(bal) > 1 else 0:.3f}, min {min(bal):.3f}, max {max(bal):.3f}")
        return
    results = []
    for seed in args.seeds:
        results.append(one_seed(spark, cfg, seed))
        (work / "selection.json").write_text(json.dumps(results, indent=1, default=float))
        print(f"seed {seed}: " + ", ".join(f"{r} {v['test']['balanced_accuracy']:.3f} (epoch {v['epoch']})"
                                          for r, v in results[-1]["rules"].items()), flush=True)
    print(f"\n{args.kind}: {len(args.seeds)} seeds, val n={results[0]['val_n']}, test n={results[0]['test_n']}\n")
    print(table(results))


if __name__ == "__main__":
    main()
