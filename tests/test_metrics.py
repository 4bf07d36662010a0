"""Metric functions against scikit-learn on known predictions (no Spark)."""
import math

import numpy as np
import pytest
from sklearn import metrics as M

from benchmarks.measures import largest_identical_group
from lesionspark.modeling import metrics
from lesionspark.core.classes import CLASSES

K = len(CLASSES)


def _probs(rng, y, skill=2.0):
    """Softmax scores that favour the true class, so every metric is away from its trivial value."""
    logits = rng.normal(size=(len(y), K))
    logits[np.arange(len(y)), y] += skill
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def known():
    rng = np.random.default_rng(0)
    y = rng.choice(K, size=400, p=[0.05, 0.08, 0.12, 0.03, 0.12, 0.55, 0.05])
    return y, _probs(rng, y)


def test_values_equal_scikit_learn(known):
    y, probs = known
    pred = probs.argmax(1)
    r = metrics.classification(y, probs, list(CLASSES))
    o = r["overall"]
    assert o["accuracy"] == pytest.approx(M.accuracy_score(y, pred))
    assert o["balanced_accuracy"] == pytest.approx(M.balanced_accuracy_score(y, pred))
    assert o["macro_f1"] == pytest.approx(M.f1_score(y, pred, average="macro"))
    assert o["weighted_f1"] == pytest.approx(M.f1_score(y, pred, average="weighted"))
    assert o["cohen_kappa"] == pytest.approx(M.cohen_kappa_score(y, pred))
    assert o["macro_auc"] == pytest.approx(M.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    p, rec, f, s = M.precision_recall_fscore_support(y, pred)
    for k, c in enumerate(CLASSES):
        assert r["per_class"][c]["precision"] == pytest.approx(p[k])
        assert r["per_class"][c]["recall"] == pytest.approx(rec[k])
        assert r["per_class"][c]["f1"] == pytest.approx(f[k])
        assert r["per_class"][c]["support"] == s[k]
    cm = M.confusion_matrix(y, pred)
    assert r["confusion"] == cm.tolist()
    np.testing.assert_allclose(np.array(r["confusion_rate"]), cm / cm.sum(1, keepdims=True))
    assert r["warnings"] == []
    assert 0.3 < o["balanced_accuracy"] < 0.95  # the fixture is neither trivial nor perfect


def test_absent_class_and_never_predicted_class_are_defined_and_warned(known):
    y, probs = known
    keep = y != CLASSES.index("df")                       # df absent from the split
    y, probs = y[keep], probs[keep].copy()
    vasc = CLASSES.index("vasc")
    probs[:, vasc] = 0.0                                  # vasc never predicted
    r = metrics.classification(y, probs, list(CLASSES))
    assert math.isnan(r["per_class"]["df"]["recall"]) and math.isnan(r["per_class"]["df"]["auc"])
    assert r["per_class"]["df"]["support"] == 0
    assert r["per_class"]["vasc"]["precision"] == 0.0 and r["per_class"]["vasc"]["recall"] == 0.0
    assert any("df is absent" in w for w in r["warnings"])
    assert any("vasc is never predicted" in w for w in r["warnings"])
    pred = probs.argmax(1)
    present = sorted(set(y))
    assert r["overall"]["balanced_accuracy"] == pytest.approx(M.balanced_accuracy_score(y, pred))
    assert r["overall"]["macro_f1"] == pytest.approx(
        M.f1_score(y, pred, labels=list(range(K)), average="macro", zero_division=0))
    assert r["overall"]["macro_auc"] == pytest.approx(
        np.mean([M.roc_auc_score(y == k, probs[:, k]) for k in present]))
    rows = metrics.long_rows({**r, "malignant": {}, "ci": {}, "calibration": {"ece": 0.1}}, list(CLASSES))
    assert ("recall", "df", None) in rows                  # NaN is stored as null


def test_threshold_reaches_target_sensitivity_with_best_specificity():
    rng = np.random.default_rng(1)
    y = (rng.random(500) < 0.2).astype(int)
    p = np.clip(rng.normal(0.3 + 0.35 * y, 0.15), 0, 1)
    t = metrics.threshold_for_sensitivity(y, p, 0.95)
    sens, spec = metrics.sensitivity_specificity(y, p, t)
    assert sens >= 0.95
    assert sens == pytest.approx(M.recall_score(y, p >= t))
    assert spec == pytest.approx(M.recall_score(1 - y, p < t))
    higher = np.unique(p[p > t]).min()                     # the next threshold up misses the target
    assert metrics.sensitivity_specificity(y, p, higher)[0] < 0.95
    assert math.isnan(metrics.threshold_for_sensitivity(np.zeros(10, int), p[:10], 0.95))
    view = metrics.malignant_view(y, p, 0.5, t, 0.95)
    assert view["malignant_auc"] == pytest.approx(M.roc_auc_score(y, p))
    assert view["malignant_sensitivity@sens0.95"] == sens


def test_bootstrap_is_seeded_lesion_level_and_brackets_the_point(known):
    y, probs = known
    pred = probs.argmax(1)
    lesions = np.arange(len(y)) // 2                        # two images per lesion
    a = metrics.bootstrap_ci(y, pred, lesions, K, 300, seed=5)
    b = metrics.bootstrap_ci(y, pred, lesions, K, 300, seed=5)
    c = metrics.bootstrap_ci(y, pred, lesions, K, 300, seed=6)
    assert a == b and a != c
    lo, hi = a["accuracy"]
    assert lo < M.accuracy_score(y, pred) < hi and hi - lo < 0.2
    assert metrics.bootstrap_ci(y, pred, lesions, K, 0, 0) == {}


def test_calibration_bins_and_ece():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    cal = metrics.calibration(y, probs, n_bins=10)
    # bin (0.8, 0.9]: conf 0.9, acc 1.0, 2 images; (0.5, 0.6]: 0.6 vs 1; (0.6, 0.7]: 0.7 vs 0
    assert cal["ece"] == pytest.approx((0.1 * 2 + 0.4 + 0.7) / 4)
    assert sum(b["count"] for b in cal["bins"]) == 4


def test_confusion_scores_equal_scikit_learn_on_resamples(known):
    """The vectorised scores behind the bootstrap against scikit-learn, on resamples that lose whole
    classes (absent from y_true, never predicted)."""
    y, probs = known
    pred = probs.argmax(1)
    rng = np.random.default_rng(1)
    for size in (400, 40, 8):
        idx = rng.integers(0, len(y), size)
        t, p = y[idx], pred[idx]
        cm = M.confusion_matrix(t, p, labels=list(range(K)))
        got = metrics.confusion_scores(cm)
        assert got["accuracy"] == pytest.approx(M.accuracy_score(t, p))
        assert got["balanced_accuracy"] == pytest.approx(metrics._quiet(M.balanced_accuracy_score, t, p))
        assert got["macro_f1"] == pytest.approx(M.f1_score(t, p, labels=list(range(K)), average="macro",
                                                          zero_division=0))
        summary = metrics.confusion_summary(cm)  # what the Horovod ranks allreduce and report
        assert summary["n"] == size and summary["accuracy"] == pytest.approx(got["accuracy"])
        assert summary["weighted_f1"] == pytest.approx(M.f1_score(t, p, average="weighted", zero_division=0))
    assert metrics.confusion_summary(np.zeros((K, K)))["accuracy"] is None


def test_bootstrap_resamples_whole_lesions():
    """Every lesion has one right and one wrong image: any resample of whole lesions is exactly 50 %
    accurate, where resampling images would spread the interval."""
    y = np.repeat(np.arange(100) % K, 2)
    pred = y.copy()
    pred[1::2] = (y[1::2] + 1) % K
    lesions = np.arange(200) // 2
    assert metrics.bootstrap_ci(y, pred, lesions, K, 500, seed=0)["accuracy"] == (0.5, 0.5)
    assert metrics.bootstrap_ci(y, pred, np.arange(200), K, 500, seed=0)["accuracy"][0] < 0.45


def test_largest_identical_group_counts_outputs_equal_to_four_decimals():
    probs = np.array([[0.2, 0.8], [0.20001, 0.79999], [0.3, 0.7], [0.2, 0.8]])
    assert largest_identical_group(probs) == 3
    assert largest_identical_group(np.array([[0.1, 0.9], [0.4, 0.6]])) == 1
    assert largest_identical_group(np.zeros((0, 7))) == 0
