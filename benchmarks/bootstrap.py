"""The lesion bootstrap of `evaluate`: the vectorised `metrics.bootstrap_ci` against the bare
baseline, a scikit-learn loop (one resample at a time, three scikit-learn metric calls each: what
the straightforward way), on the same predictions with the same seed.

Predictions are drawn at HAM10000's class shares, about 1.4 images per lesion, 70 % right.
The two must give the same intervals (the resamples are drawn from one generator in the same order).

    .venv/bin/python benchmarks/bootstrap.py --n-images 1495,20000 --resamples 1000
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesionspark.modeling import metrics  # noqa: E402

SHARES = [0.033, 0.051, 0.110, 0.011, 0.111, 0.669, 0.014]  # akiec..vasc in HAM10000


def sklearn_loop(y_true, y_pred, groups, n_classes, n_boot, seed, level=0.95):
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.searchsorted(inverse[order], np.arange(inverse.max() + 1))[1:])
    rng = np.random.default_rng(seed)
    values = {m: [] for m in metrics.OVERALL_CI}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
            t, p = y_true[idx], y_pred[idx]
            values["accuracy"].append(accuracy_score(t, p))
            values["balanced_accuracy"].append(balanced_accuracy_score(t, p))
            values["macro_f1"].append(f1_score(t, p, labels=list(range(n_classes)), average="macro", zero_division=0))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {m: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for m, v in values.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", default="1495,20000")
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    print("| images | lesions | scikit-learn loop s | vectorised s | speed-up | same intervals |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for n in (int(x) for x in args.n_images.split(",")):
        rng = np.random.default_rng(0)
        y = rng.choice(7, n, p=np.array(SHARES) / sum(SHARES))
        pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, 7, n))
        lesions = rng.integers(0, int(n / 1.4), n)
        times, results = [], []
        for fn in (sklearn_loop, metrics.bootstrap_ci):
            t = time.perf_counter()
            results.append(fn(y, pred, lesions, 7, args.resamples, 0))
            times.append(time.perf_counter() - t)
        same = all(np.allclose(results[0][m], results[1][m], atol=1e-12) for m in metrics.OVERALL_CI)
        print(f"| {n:,} | {len(np.unique(lesions)):,} | {times[0]:.2f} | {times[1]:.3f} | "
              f"{times[0] / times[1]:.0f}x | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
