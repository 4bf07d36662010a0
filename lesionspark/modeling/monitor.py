"""What scheduled scoring watches (pure functions, no Spark): the model's reference distribution of
predicted classes and confidence, and the population stability index (PSI) of a run against it.

Runs on the driver (evaluate writes the reference, score compares against it).
"""
from __future__ import annotations

import math

import numpy as np

EPS = 1e-4  # share given to a class absent on one side, so that PSI stays finite


def reference(probs: np.ndarray, classes: list[str], low_confidence: float, split: str) -> dict:
    """The reference a model card keeps (from ``evaluate`` on ``split``): share of each predicted
    class, mean top-class confidence, share of images under ``low_confidence``."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(classes))
    top = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    n = len(probs)
    return {"split": split, "n": int(n),
            "predicted_share": {c: float((top == i).sum() / n) if n else 0.0 for i, c in enumerate(classes)},
            "mean_confidence": float(conf.mean()) if n else None,
            "low_confidence": float(low_confidence),
            "low_confidence_share": float((conf < low_confidence).mean()) if n else None}


def shares(counts: dict[str, int], classes: list[str]) -> dict[str, float]:
    total = sum(counts.get(c, 0) for c in classes)
    return {c: (counts.get(c, 0) / total if total else 0.0) for c in classes}


def psi(expected: dict[str, float], actual: dict[str, float]) -> float:
    """Population stability index, sum over classes of (a - e) * ln(a / e), with empty classes at
    ``EPS``. Rule of thumb: < 0.1 stable, 0.1-0.2 moderate shift, > 0.2 a shift worth a look."""
    total = 0.0
    for c in expected:
        e, a = max(expected[c], EPS), max(actual.get(c, 0.0), EPS)
        total += (a - e) * math.log(a / e)
    return float(total)
