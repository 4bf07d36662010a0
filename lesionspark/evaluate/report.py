"""The evaluation report: PNG plots and ``report.md`` under ``reports/<model>/<version>/``.

Plots are drawn with matplotlib's Agg backend into a local temporary folder and uploaded with the
per-image predictions; the report folder is replaced atomically, so a rerun leaves one report.

Runs on the driver.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np
import pandas as pd

from ..store import storage

from ..store import publishing
from ..core.classes import malignant_outputs
from .results import scored, truth

DPI = 100
METHOD_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM", "gradcampp": "Grad-CAM++"}
SIZES = {"roc": (7, 6), "confusion": (13, 5.5), "reliability": (6, 6), "recall": (8, 4.5), "training_curves": (12, 4)}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> None:
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)


def plot_roc(path: str, frame: pd.DataFrame, probs: np.ndarray, classes: list[str], result: dict, p_mal: np.ndarray,
             title: str):
    from sklearn.metrics import roc_curve
    plt = _plt()
    y = truth(frame, classes)
    fig, ax = plt.subplots(figsize=SIZES["roc"])
    for k, c in enumerate(classes):
        auc = result["per_class"][c]["auc"]
        if math.isnan(auc):
            continue
        fpr, tpr, _ = roc_curve(y == k, probs[:, k])
        ax.plot(fpr, tpr, lw=1.2, label=f"{c} (AUC {auc:.3f})")
    y_mal = frame["malignant"].to_numpy()
    if not math.isnan(result["malignant"]["malignant_auc"]):
        fpr, tpr, _ = roc_curve(y_mal, p_mal)
        ax.plot(fpr, tpr, lw=2.5, color="black", label=f"malignant vs benign (AUC {result['malignant']['malignant_auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
           title=f"ROC one-vs-rest: {title}", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(path: str, result: dict, classes: list[str], title: str):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=SIZES["confusion"])
    for ax, key, fmt, name in ((axes[0], "confusion", "d", "counts"),
                               (axes[1], "confusion_rate", ".2f", "row-normalised (recall on the diagonal)")):
        m = np.array(result[key], dtype=float)
        ax.imshow(np.nan_to_num(m if key == "confusion_rate" else m / max(m.max(), 1)), cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                txt = "–" if math.isnan(m[i, j]) else format(int(m[i, j]) if fmt == "d" else m[i, j], fmt)
                shade = np.nan_to_num(m[i, j] if key == "confusion_rate" else m[i, j] / max(m.max(), 1))
                ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if shade > 0.6 else "black")
        ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
               xlabel="predicted", ylabel="true", title=f"{name}")
    fig.suptitle(f"Confusion matrix: {title}")
    fig.tight_layout()
    _save(fig, path)


def plot_reliability(path: str, result: dict, frame: pd.DataFrame, p_mal: np.ndarray, title: str, n_bins: int):
    from sklearn.calibration import calibration_curve
    plt = _plt()
    fig, ax = plt.subplots(figsize=SIZES["reliability"])
    bins = result["calibration"]["bins"]
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfectly calibrated")
    before = result.get("calibration_uncalibrated", {}).get("bins")
    if before:
        ax.plot([b["confidence"] for b in before], [b["accuracy"] for b in before], marker="x", ls="--", color="grey",
                label=f"top-label, uncalibrated (ECE {result['calibration_uncalibrated']['ece']:.3f})")
    if bins:
        t = result["calibration"].get("temperature", 1.0)
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"top-label, temperature {t:.2f} (ECE {result['calibration']['ece']:.3f})")
    y_mal = frame["malignant"].to_numpy()
    if 0 < y_mal.sum() < len(y_mal):
        frac, mean = calibration_curve(y_mal, p_mal, n_bins=min(n_bins, 10), strategy="quantile")
        ax.plot(mean, frac, marker="s", label="malignant probability")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability: {title}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_recall(path: str, result: dict, classes: list[str], title: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=SIZES["recall"])
    recall = [result["per_class"][c]["recall"] for c in classes]
    support = [result["per_class"][c]["support"] for c in classes]
    malignant = set(malignant_outputs(classes))
    bars = ax.bar(classes, np.nan_to_num(recall), color=["#c0392b" if k in malignant else "#2e86c1"
                                                         for k in range(len(classes))])
    for b, r, s in zip(bars, recall, support):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01, "n/a" if math.isnan(r) else f"{r:.2f}\nn={s}",
                ha="center", va="bottom", fontsize=8)
    ax.axhline(result["overall"]["balanced_accuracy"], ls="--", color="black", lw=1, label="balanced accuracy")
    ax.set(ylim=(0, 1.15), ylabel="recall (sensitivity)", title=f"Per-class recall: {title} (red = malignant)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_training(path: str, history: dict, title: str):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=SIZES["training_curves"])
    epochs = range(1, len(history.get("loss", [])) + 1)
    for ax, keys, name in ((axes[0], ("loss", "val_loss"), "loss"),
                           (axes[1], ("accuracy", "val_accuracy", "macro_recall", "val_macro_recall"), "accuracy / macro recall"),
                           (axes[2], ("lr",), "learning rate")):
        for k in keys:
            if history.get(k):
                ax.plot(epochs, history[k], marker=".", label=k)
        ax.set(xlabel="epoch", title=name)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"Training curves: {title}")
    fig.tight_layout()
    _save(fig, path)


def pick_examples(good: pd.DataFrame, probs: np.ndarray, y: np.ndarray, classes: list[str], k: int) -> pd.DataFrame:
    """Per true class, the ``k`` most confident correct and the ``k`` most confident wrong images:
    ``image_id, true, predicted, confidence, correct`` (rows of ``good``, in class order)."""
    pred = probs.argmax(1) if len(good) else np.array([], int)
    conf = probs.max(1) if len(good) else np.array([])
    frame = pd.DataFrame({"image_id": good["image_id"].to_numpy(), "true": y, "predicted": pred,
                          "confidence": conf, "correct": y == pred})
    picks = []
    for c in range(len(classes)):
        of_class = frame[frame["true"] == c].sort_values(["confidence", "image_id"], ascending=[False, True])
        picks += [of_class[of_class["correct"]].head(k), of_class[~of_class["correct"]].head(k)]
    return pd.concat(picks, ignore_index=True) if picks else frame.head(0)


def plot_gradcam_grid(path: str, examples: pd.DataFrame, images: np.ndarray, overlays: list, classes: list[str],
                      k: int, title: str, method: str):
    """One row per class: ``k`` correct then ``k`` wrong examples with their heatmap overlays; an image
    whose map is empty (no positive evidence, overlay None) is shown plain and says so."""
    plt = _plt()
    fig, axes = plt.subplots(len(classes), 2 * k, figsize=(2.1 * 2 * k, 2.3 * len(classes)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, c in enumerate(classes):
        axes[i][0].text(-0.08, 0.5, c, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=11)
        for j, correct in ((0, True), (k, False)):
            rows = examples[(examples["true"] == i) & (examples["correct"] == correct)]
            for n, (idx, row) in enumerate(rows.iterrows()):
                ax = axes[i][j + n]
                ax.imshow(images[idx] if overlays[idx] is None else overlays[idx])
                ax.set_title(f"{'ok' if correct else 'WRONG'}: {classes[int(row['predicted'])]} "
                             f"{row['confidence']:.2f}", fontsize=8, color="black" if correct else "crimson")
                if overlays[idx] is None:
                    ax.text(0.5, 0.05, "no positive evidence", transform=ax.transAxes, ha="center", fontsize=7,
                            color="white", backgroundcolor="black")
    fig.suptitle(f"{METHOD_NAMES.get(method, method)} of the predicted class: {k} most confident correct | "
                 f"{k} most confident wrong "
                 f"per true class\n{title}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


HEATMAP_NOTE = ("Heatmaps of the predicted class (`inference.heatmap`: HiResCAM, Grad-CAM or Grad-CAM++) on the last "
                "convolutional feature map, over the image. Per true class: the most confident correct and the most "
                "confident wrong test images; an image whose map has no positive evidence is shown plain and says so. "
                "`lesionspark explain` writes such overlays for a whole split or an image folder.")


OBJECTIVE_TEXT = {"ece": "the lowest top-label expected calibration error (ECE, {bins} bins)",
                  "nll": "the lowest log-loss"}


def _calibration_note(calibration: dict) -> str:
    """The calibration sentence, from what the run recorded (``evaluate._calibration_facts``)."""
    t = calibration.get("temperature", 1.0)
    objective = OBJECTIVE_TEXT.get(calibration.get("objective"), "an objective the card does not record")
    how = objective.format(bins=calibration.get("bins") or "n/a")
    where = calibration.get("split") or "a split the card does not record"
    if calibration.get("source") == "fitted":
        fit = f"fitted by this run on {where} for {how}"
    else:
        fit = f"taken from the model card, where it was fitted on {where} for {how}"
    return (f"Probabilities are temperature-scaled (T = {_fmt(t)}, {fit}; the argmax, and so accuracy and every "
            "per-class decision, is unchanged). Every figure below, the operating threshold and the drift reference "
            "are on the calibrated probabilities.")


def _selection_note(card: dict) -> str:
    """Which weights the evaluated model holds, from the card's ``selection`` (``train.select``)."""
    sel = card.get("selection") or {}
    epochs = ", ".join(str(e) for e in sel.get("epochs", [])) or "unknown"
    of = f"of {card.get('epochs_run')} epochs run"
    if sel.get("rule") == "last":
        return f"The model holds the weights of its last epoch ({epochs} {of}; `train.select: last`): nothing was chosen on val."
    if sel.get("rule") == "swa":
        return (f"The model holds the mean of the weights of epochs {epochs} ({of}; `train.select: swa`), batch-norm "
                "statistics recomputed for the mean: nothing was chosen on val.")
    if sel.get("rule") == "best":
        return (f"The model holds the weights of epoch {epochs} ({of}), the best on val `{sel.get('monitor')}` "
                "(`train.select: best`): val took part in choosing it, so val figures are optimistic.")
    return "The card does not record which epoch's weights the model holds."


def _interval_note(resamples: int, seed) -> str:
    if not resamples:
        return "No confidence intervals: `evaluate.bootstrap` was 0 for this run."
    return (f"Confidence intervals: percentile bootstrap over lesions (all images of a resampled lesion together), "
            f"{resamples} resamples, seed {seed}.")


def _split_protocol(manifest: dict) -> list[str]:
    """The report's split section: how the splits were made, and images, lesions and classes per split."""
    split_cfg = manifest.get("split", {})
    by_split = manifest.get("counts", {}).get("by_split", {})
    out = ["", "## Split protocol", "",
           f"Splits are grouped by `lesion_id` (every image of a lesion is in exactly one split; "
           f"lesion-grouped: {manifest.get('lesion_grouped', True)}), stratified by class and seeded. "
           f"Parameters: `{json.dumps(split_cfg)}`.", ""]
    if by_split:
        cols = sorted({c for v in by_split.values() for c in v.get("per_class", {})})
        lesions = manifest.get("counts", {}).get("lesions_by_split", {})
        out.append(_table(["split", "images", "lesions", *cols],
                          [[s, v.get("total"), lesions.get(s, "n/a"), *(v.get("per_class", {}).get(c, 0) for c in cols)]
                           for s, v in by_split.items()]))
    return out


def markdown(card: dict, manifest: dict, results: dict, classes: list[str], threshold_split: str, threshold: float,
             target: float, plots: dict, run_id: str, intervals: tuple = (0, None)) -> str:
    """The report; ``intervals``: (bootstrap resamples, seed) of this run."""
    ci = {s: r.get("ci", {}) for s, r in results.items()}
    out = [f"# Evaluation of {card['name']}:{card['version']} on {manifest['dataset']}",
           "",
           "*Assistive research tool output, not a diagnosis.* "
           f"Evaluation run `{run_id}`; model trained with balance `{card.get('balance')}` on dataset "
           f"`{card.get('dataset')}` (fingerprint `{card.get('dataset_fingerprint')}`).",
           "", "## Overall", ""]
    rows = []
    for s, r in results.items():
        o, m = r["overall"], r["malignant"]
        def with_ci(k):
            lo, hi = ci[s].get(k, (math.nan, math.nan))
            return f"{_fmt(o[k])} [{_fmt(lo)}, {_fmt(hi)}]" if ci[s] else _fmt(o[k])
        rows.append([s, o["n_images"], with_ci("accuracy"), with_ci("balanced_accuracy"), with_ci("macro_f1"),
                     o["weighted_f1"], o["cohen_kappa"], o["macro_auc"], m["malignant_auc"],
                     r.get("calibration_uncalibrated", {}).get("ece", math.nan), r["calibration"]["ece"]])
    out.append(_table(["split", "images", "accuracy [95% CI]", "balanced accuracy [95% CI]", "macro F1 [95% CI]",
                       "weighted F1", "Cohen's kappa", "macro AUC (OvR)", "malignant AUC", "ECE uncalibrated",
                       "ECE"], rows))
    out += ["", _selection_note(card), "", _calibration_note(card.get("calibration") or {})]
    out += ["", _interval_note(*intervals), "", "## Benign vs malignant", "",
            f"`malignant_probability` = sum of the probabilities of {', '.join(classes[k] for k in malignant_outputs(classes))}. "
            f"The operating threshold for sensitivity ≥ {target:g} was chosen on **{threshold_split}** "
            f"(threshold {_fmt(threshold)}) and is applied unchanged to the other splits.", ""]
    t = f"{target:g}"
    out.append(_table(["split", "prevalence", "AUC", "sensitivity @default", "specificity @default",
                       f"sensitivity @{threshold_split} threshold", f"specificity @{threshold_split} threshold", "Brier"],
                      [[s, r["malignant"]["malignant_prevalence"], r["malignant"]["malignant_auc"],
                        r["malignant"]["malignant_sensitivity@default"], r["malignant"]["malignant_specificity@default"],
                        r["malignant"][f"malignant_sensitivity@sens{t}"], r["malignant"][f"malignant_specificity@sens{t}"],
                        r["malignant"]["malignant_brier"]] for s, r in results.items()]))
    for s, r in results.items():
        out += ["", f"## {s}: per class", ""]
        out.append(_table(["class", "precision", "recall", "F1", "support", "AUC (OvR)"],
                          [[c, *(r["per_class"][c][k] for k in ("precision", "recall", "f1", "support", "auc"))]
                           for c in classes]))
        out += ["", "Confusion matrix (rows true, columns predicted):", ""]
        out.append(_table(["true \\ predicted", *classes], [[c, *r["confusion"][i]] for i, c in enumerate(classes)]))
        if r["warnings"]:
            out += ["", "Warnings:", ""] + [f"- {w}" for w in r["warnings"]]
        out += [""] + [f"![{name}]({file})" for name, file in plots.get(s, [])]
    if "gradcam" in plots:
        out += ["", "## Where the model looked", "", HEATMAP_NOTE, ""]
        out += [f"![{name}]({file})" for name, file in plots["gradcam"]]
    out += ["", "## Training", ""] + [f"![{name}]({file})" for name, file in plots.get("training", [])]
    out += _split_protocol(manifest)
    out += ["", "## Dataset manifest", "", "```json", json.dumps(manifest, indent=2, default=str), "```",
            "", "## Model card", "", "```json", json.dumps(card, indent=2, default=str), "```", ""]
    return "\n".join(out)


def write_report(uri: str, *, card, manifest, history, frames, results, threshold_split, threshold, cfg, run_id,
                 gradcam=None) -> str:
    """Publish the report at ``uri``; returns where readers find it (``publishing.AtomicDir.published``).
    ``gradcam``: (split, examples from ``pick_examples``, their images, their overlays or None) for
    the heatmap grid."""
    classes = list(card["classes"])
    title = f"{card['name']}:{card['version']}"
    n_bins = int(cfg.get("evaluate.calibration_bins"))
    plots: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for split, frame in frames.items():
            good, probs, p_mal = scored(frame, classes)
            r, st = results[split], f"{title} on {manifest['dataset']}/{split}"
            plot_roc(f"{tmp}/roc_{split}.png", good, probs, classes, r, p_mal, st)
            plot_confusion(f"{tmp}/confusion_{split}.png", r, classes, st)
            plot_reliability(f"{tmp}/reliability_{split}.png", r, good, p_mal, st, n_bins)
            plot_recall(f"{tmp}/recall_{split}.png", r, classes, st)
            plots[split] = [(f"{kind} {split}", f"{kind}_{split}.png") for kind in ("roc", "confusion", "reliability", "recall")]
            preds = frame.assign(predicted_label=[None if p is None else int(np.argmax(p)) for p in frame["probabilities"]])
            preds.to_parquet(f"{tmp}/predictions_{split}.parquet", index=False)
        if gradcam is not None:
            split, examples, images, overlays = gradcam
            plot_gradcam_grid(f"{tmp}/gradcam_{split}.png", examples, images, overlays, classes,
                              int(cfg.get("evaluate.gradcam_examples")), f"{title} on {manifest['dataset']}/{split}",
                              cfg.get("inference.heatmap"))
            plots["gradcam"] = [(f"Grad-CAM {split}", f"gradcam_{split}.png")]
        plot_training(f"{tmp}/training_curves.png", history, title)
        plots["training"] = [("training curves", "training_curves.png")]
        with open(f"{tmp}/report.md", "w") as fh:
            fh.write(markdown(card, manifest, results, classes, threshold_split, threshold,
                              float(cfg.get("evaluate.target_sensitivity")), plots, run_id,
                              (int(cfg.get("evaluate.bootstrap")), cfg.get("evaluate.seed"))))
        with open(f"{tmp}/metrics.json", "w") as fh:
            json.dump({"run_id": run_id, "threshold_split": threshold_split, "threshold": threshold,
                       "results": results}, fh, indent=2, default=str)
        publish = publishing.AtomicDir(uri, run_id)
        with publish as staging:
            for name in sorted(os.listdir(tmp)):
                with open(f"{tmp}/{name}", "rb") as fh:
                    storage.write_bytes(f"{staging}/{name}", fh.read())
    return publish.published
