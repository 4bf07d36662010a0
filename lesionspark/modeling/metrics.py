"""Evaluation metrics from per-image predictions: pure functions over numpy arrays.

Everything scikit-learn computes is taken from scikit-learn. What it does not have is written here
and kept small: the threshold for a target sensitivity, the lesion-level bootstrap and the
top-label calibration bins. Undefined values (a class absent from the split, no malignant images)
are NaN with a message in ``warnings``; they never raise.

Runs on the driver (evaluate) and in Horovod ranks (``confusion_summary`` of the allreduced matrix).
"""
from __future__ import annotations

import math
import warnings as _warnings

import numpy as np

OVERALL_CI = ("accuracy", "balanced_accuracy", "macro_f1")


def _quiet(fn, *args, **kw):
    """Call a scikit-learn metric without its UndefinedMetricWarning chatter (we report our own)."""
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        return fn(*args, **kw)


def classification(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Overall, per-class and confusion metrics of an argmax classifier over ``classes``."""
    from sklearn import metrics as M
    labels = list(range(len(classes)))
    y_pred = probs.argmax(axis=1)
    notes = []
    present = set(np.unique(y_true).tolist())
    predicted = set(np.unique(y_pred).tolist())
    for k, c in enumerate(classes):
        if k not in present:
            notes.append(f"class {c} is absent from the split: its recall and AUC are undefined (NaN)")
        elif k not in predicted:
            notes.append(f"class {c} is never predicted: its precision is undefined and reported as 0")
    p, r, f, s = _quiet(M.precision_recall_fscore_support, y_true, y_pred, labels=labels, zero_division=0)
    cm = M.confusion_matrix(y_true, y_pred, labels=labels)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_rate = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)
    auc = []
    for k in labels:
        pos = y_true == k
        auc.append(float(M.roc_auc_score(pos, probs[:, k])) if 0 < pos.sum() < len(y_true) else math.nan)
    per_class = {c: {"precision": float(p[k]), "recall": float(r[k]) if k in present else math.nan,
                     "f1": float(f[k]), "support": int(s[k]), "auc": auc[k]} for k, c in enumerate(classes)}
    overall = {
        "n_images": int(len(y_true)),
        "accuracy": float(M.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_quiet(M.balanced_accuracy_score, y_true, y_pred)),
        "macro_f1": float(_quiet(M.f1_score, y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "weighted_f1": float(_quiet(M.f1_score, y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "macro_precision": float(_quiet(M.precision_score, y_true, y_pred, labels=labels, average="macro",
                                        zero_division=0)),
        "cohen_kappa": float(M.cohen_kappa_score(y_true, y_pred, labels=labels)),
        # One-vs-rest macro AUC over the classes that are present (scikit-learn's ovr macro when all are).
        "macro_auc": float(np.nanmean(auc)) if not all(math.isnan(a) for a in auc) else math.nan,
    }
    return {"overall": overall, "per_class": per_class, "confusion": cm.tolist(),
            "confusion_rate": cm_rate.tolist(), "warnings": notes}


def sensitivity_specificity(y_mal: np.ndarray, p_mal: np.ndarray, threshold: float) -> tuple[float, float]:
    """Recall of malignant and of benign when ``p_mal >= threshold`` calls malignant."""
    from sklearn.metrics import recall_score
    pred = (p_mal >= threshold).astype(int)
    sens = float(_quiet(recall_score, y_mal, pred, pos_label=1, zero_division=np.nan)) if (y_mal == 1).any() else math.nan
    spec = float(_quiet(recall_score, y_mal, pred, pos_label=0, zero_division=np.nan)) if (y_mal == 0).any() else math.nan
    return sens, spec


def threshold_for_sensitivity(y_mal: np.ndarray, p_mal: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (so the best specificity there).
    NaN when there are no malignant and benign images to choose from."""
    from sklearn.metrics import roc_curve
    if not ((y_mal == 1).any() and (y_mal == 0).any()):
        return math.nan
    _, tpr, thr = roc_curve(y_mal, p_mal, drop_intermediate=False)
    ok = np.flatnonzero(tpr >= target)
    return float(min(thr[ok[0]], 1.0))


def malignant_view(y_mal: np.ndarray, p_mal: np.ndarray, default_threshold: float,
                   chosen_threshold: float, target: float) -> dict:
    from sklearn.metrics import brier_score_loss, roc_auc_score
    both = (y_mal == 1).any() and (y_mal == 0).any()
    out = {"malignant_auc": float(roc_auc_score(y_mal, p_mal)) if both else math.nan,
           "malignant_brier": float(brier_score_loss(y_mal, p_mal)) if len(y_mal) else math.nan,
           "malignant_prevalence": float(y_mal.mean()) if len(y_mal) else math.nan}
    out["malignant_sensitivity@default"], out["malignant_specificity@default"] = \
        sensitivity_specificity(y_mal, p_mal, default_threshold)
    out["malignant_threshold@default"] = float(default_threshold)
    out[f"malignant_threshold@sens{target:g}"] = chosen_threshold
    if math.isnan(chosen_threshold):
        out[f"malignant_sensitivity@sens{target:g}"] = out[f"malignant_specificity@sens{target:g}"] = math.nan
    else:
        out[f"malignant_sensitivity@sens{target:g}"], out[f"malignant_specificity@sens{target:g}"] = \
            sensitivity_specificity(y_mal, p_mal, chosen_threshold)
    return out


def confusion_scores(cm: np.ndarray) -> dict:
    """Accuracy, balanced accuracy and macro F1 of confusion matrices ``cm[..., true, predicted]``,
    as scikit-learn defines them: balanced accuracy averages recall over the classes present;
    macro F1 averages 2tp / (2tp + fp + fn) over every class, 0 where that is 0 / 0."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    rows, cols = cm.sum(axis=-1), cm.sum(axis=-2)
    total = rows.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(rows > 0, tp / np.maximum(rows, 1), 0.0)
        denom = rows + cols
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        return {"accuracy": tp.sum(axis=-1) / total,
                "balanced_accuracy": recall.sum(axis=-1) / (rows > 0).sum(axis=-1),
                "macro_f1": f1.mean(axis=-1)}


def confusion_summary(cm: np.ndarray) -> dict:
    """The training summary of one confusion matrix: n, accuracy, balanced accuracy, macro and
    weighted F1 (F1 per class weighted by its true count, as scikit-learn's ``average="weighted"``)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = float(cm.sum())
    if n == 0:
        return {"n": 0, "accuracy": None, "balanced_accuracy": None, "macro_f1": None, "weighted_f1": None}
    tp, rows, cols = np.diagonal(cm), cm.sum(axis=1), cm.sum(axis=0)
    f1 = np.where(rows + cols > 0, 2 * tp / np.maximum(rows + cols, 1), 0.0)
    return {"n": int(n), **{k: float(v) for k, v in confusion_scores(cm).items()},
            "weighted_f1": float((f1 * rows).sum() / n)}


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, n_classes: int,
                 n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Percentile intervals for accuracy, balanced accuracy and macro F1, resampling whole lesions
    (images of one lesion are not independent), seeded.

    Vectorised: each lesion is reduced once to its counts per (true, predicted) cell; a resample is
    how many times each lesion was drawn, so its confusion matrix is one matrix product. Memory is
    bounded by doing the resamples in blocks."""
    if n_boot <= 0 or len(y_true) == 0:
        return {}
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    per_group = np.zeros((n_groups, n_classes * n_classes))
    np.add.at(per_group, (inverse, np.asarray(y_true) * n_classes + np.asarray(y_pred)), 1)
    rng = np.random.default_rng(seed)
    block = max(1, 4_000_000 // n_groups)
    scores = {m: [] for m in OVERALL_CI}
    for first in range(0, n_boot, block):
        b = min(block, n_boot - first)
        draws = rng.integers(0, n_groups, (b, n_groups)) + n_groups * np.arange(b)[:, None]
        drawn = np.bincount(draws.ravel(), minlength=b * n_groups).reshape(b, n_groups)
        for m, v in confusion_scores((drawn @ per_group).reshape(b, n_classes, n_classes)).items():
            scores[m].append(v)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    merged = {m: np.concatenate(v) for m, v in scores.items()}
    return {m: (float(np.percentile(v, lo)), float(np.percentile(v, hi))) for m, v in merged.items()}



def calibration(y_true: np.ndarray, probs: np.ndarray, n_bins: int) -> dict:
    """Top-label reliability: per confidence bin, mean confidence, accuracy and count; and the
    expected calibration error, sum over bins of |accuracy - confidence| x share of images; and the
    log-loss (mean negative log-probability of the true class)."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = which == b
        if m.any():
            bins.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "confidence": float(conf[m].mean()),
                         "accuracy": float(correct[m].mean()), "count": int(m.sum())})
            ece += abs(correct[m].mean() - conf[m].mean()) * m.sum() / len(conf)
    p_true = np.clip(probs[np.arange(len(y_true)), y_true], 1e-30, 1.0) if len(conf) else np.array([])
    return {"ece": float(ece) if len(conf) else math.nan, "nll": float(-np.log(p_true).mean()) if len(conf) else math.nan,
            "bins": bins}


def long_rows(result: dict, classes: list[str]) -> list[tuple[str, str | None, float | None]]:
    """One split's result as (metric, class, value) rows: the metrics table's long format.
    NaN becomes null. Confusion cells are ``confusion_count`` / ``confusion_rate`` with class
    ``<true>-><predicted>``."""
    def v(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
    rows = [(m, None, v(x)) for m, x in result["overall"].items()]
    rows += [(m, None, v(x)) for m, x in result.get("malignant", {}).items()]
    for m, (lo, hi) in result.get("ci", {}).items():
        rows += [(f"{m}_ci_low", None, v(lo)), (f"{m}_ci_high", None, v(hi))]
    rows.append(("ece", None, v(result["calibration"]["ece"])))
    rows.append(("log_loss", None, v(result["calibration"].get("nll"))))
    if "calibration_uncalibrated" in result:
        rows.append(("ece_uncalibrated", None, v(result["calibration_uncalibrated"]["ece"])))
        rows.append(("log_loss_uncalibrated", None, v(result["calibration_uncalibrated"].get("nll"))))
    if "temperature" in result["calibration"]:
        rows.append(("temperature", None, v(result["calibration"]["temperature"])))
    for c, ms in result["per_class"].items():
        rows += [(m, c, v(x)) for m, x in ms.items()]
    for kind in ("confusion_count", "confusion_rate"):
        matrix = result["confusion" if kind == "confusion_count" else "confusion_rate"]
        rows += [(kind, f"{classes[i]}->{classes[j]}", v(matrix[i][j]))
                 for i in range(len(classes)) for j in range(len(classes))]
    return rows
