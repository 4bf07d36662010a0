"""Evidence on real data: how far the patient's age, sex and the lesion's site alone go.

The HAM10000 metadata is genuine (all 10,015 rows, in the package). It is parsed and validated by
the same `metadata.parse_metadata` ingest uses and split by lesion with the same
`split.assign_splits` (70/15/15, seeded as `dataset.split.seed`), so no lesion is in two splits.
Features: age (scaled, with a missing flag), sex and localization one-hot, "unknown" as its own
category. Classifiers (scikit-learn), each with balanced class weights where it takes them:
the majority class (the floor), a multinomial logistic regression, gradient-boosted trees.
Test balanced accuracy, macro F1 and accuracy with 95 % lesion-bootstrap intervals
(`metrics.bootstrap_ci`, the one `evaluate` uses), over several split seeds.

    .venv/bin/python benchmarks/metadata_only.py --seeds 42,0,1,2,3 --resamples 1000
"""
from __future__ import annotations

import argparse
import sys
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesionspark.modeling import metrics  # noqa: E402
from lesionspark.core.classes import CLASSES  # noqa: E402
from lesionspark.dataset.metadata import parse_metadata  # noqa: E402
from lesionspark.dataset.split import assign_splits  # noqa: E402

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def features(records: pd.DataFrame, sexes: list[str], sites: list[str]) -> np.ndarray:
    age = records["age"].astype(float)
    cols = [np.nan_to_num((age.to_numpy() - 50.0) / 20.0), age.isna().to_numpy(float)]
    cols += [(records["sex"] == s).to_numpy(float) for s in sexes]
    cols += [(records["localization"] == s).to_numpy(float) for s in sites]
    return np.column_stack(cols)


def models(seed: int) -> dict:
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    return {"majority class": DummyClassifier(strategy="most_frequent"),
            "logistic regression": LogisticRegression(class_weight="balanced", max_iter=2000, C=1.0),
            "gradient-boosted trees": HistGradientBoostingClassifier(class_weight="balanced", max_iter=200,
                                                                     learning_rate=0.05, random_state=seed)}


def run(records: pd.DataFrame, seed: int, resamples: int) -> list[dict]:
    split = assign_splits(records, FRACTIONS, seed)
    sexes, sites = sorted(records["sex"].unique()), sorted(records["localization"].unique())
    x, y = features(records, sexes, sites), records["label"].to_numpy()
    tr, te = (split == "train").to_numpy(), (split == "test").to_numpy()
    assert not set(records["lesion_id"][tr]) & set(records["lesion_id"][te])  # lesion-grouped
    out = []
    for name, model in models(seed).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x[tr], y[tr])
            probs = np.zeros((int(te.sum()), len(CLASSES)))
            probs[:, model.classes_] = model.predict_proba(x[te])
            scores = metrics.classification(y[te], probs, list(CLASSES))["overall"]
        pred = probs.argmax(axis=1)
        ci = metrics.bootstrap_ci(y[te], pred, records["lesion_id"].to_numpy()[te], len(CLASSES), resamples, seed)
        out.append({"seed": seed, "model": name, "n_test": int(te.sum()), "macro_auc": scores["macro_auc"], **{
            m: (scores[m], *ci[m]) for m in ("balanced_accuracy", "macro_f1", "accuracy")}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,0,1,2,3")
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    text = resources.files("lesionspark").joinpath("data/ham10000/HAM10000_metadata.csv").read_text()
    records, rejects = parse_metadata(text, "HAM10000_metadata.csv")
    print(f"genuine HAM10000 metadata: {len(records)} records, {len(rejects)} rejected, "
          f"{records['lesion_id'].nunique()} lesions; age missing {records['age'].isna().sum()}, "
          f"sex unknown {(records['sex'] == 'unknown').sum()}, site unknown {(records['localization'] == 'unknown').sum()}")
    rows = [r for seed in map(int, args.seeds.split(",")) for r in run(records, seed, args.resamples)]
    print("\n| split seed | classifier | test images | balanced accuracy [95 % CI] | macro F1 [95 % CI] | "
          "accuracy [95 % CI] | macro AUC |")
    print("| ---: | --- | ---: | --- | --- | --- | ---: |")
    for r in rows:
        cells = " | ".join(f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in
                           (r["balanced_accuracy"], r["macro_f1"], r["accuracy"]))
        print(f"| {r['seed']} | {r['model']} | {r['n_test']} | {cells} | {r['macro_auc']:.3f} |")
    print("\nmean over split seeds:")
    frame = pd.DataFrame([{"model": r["model"], "balanced_accuracy": r["balanced_accuracy"][0],
                           "macro_f1": r["macro_f1"][0]} for r in rows])
    print(frame.groupby("model", sort=False).agg(["mean", "std", "min", "max"]).round(3).to_string())


if __name__ == "__main__":
    main()
