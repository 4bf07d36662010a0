"""Temperature scaling (Guo et al., 2017): one scalar T per model, fitted on a held-out split.

Pure functions, no Spark. Calibrated probabilities are softmax(logits / T); the model outputs
softmax(logits), and log(p) differs from the logits only by a per-image constant, so
softmax(log(p) / T) is the same thing computed from the probabilities. T > 1 softens
over-confident outputs; dividing by a positive T never changes the argmax, so accuracy, balanced
accuracy and every per-class decision stay as they are, and a ranking metric like AUC barely moves.

``evaluate`` fits T on the threshold split (val) for ``evaluate.calibration_objective`` (the top-label
ECE by default, or the log-loss), stores it in the model card (``calibration``),
and computes the operating threshold and the drift reference on calibrated outputs; ``score``,
``explain`` and ``evaluate`` apply the card's T through ``apply_card``.

Runs on the driver (evaluate fits T) and in executors (scoring and explain apply it).
"""
from __future__ import annotations

import numpy as np

TINY = 1e-30  # a float32 softmax can round a probability to 0; its log would be -inf
BOUNDS = (0.05, 20.0)  # temperatures searched


def apply(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / temperature), row-wise, float64."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0 or probs.size == 0:
        return probs
    z = np.log(np.clip(probs, TINY, 1.0)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.clip(probs[np.arange(len(y_true)), y_true], TINY, 1.0)
    return float(-np.log(p).mean())


OBJECTIVES = ("ece", "nll")
GRID = np.unique(np.concatenate([np.exp(np.linspace(np.log(0.25), np.log(4.0), 121)), [1.0]]))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray, objective: str = "ece", n_bins: int = 15) -> float:
    """The temperature that fits ``y_true`` best under ``apply(probs, T)``. 1.0 for fewer than two
    classes seen.

    - ``ece``: the lowest top-label expected calibration error over a log-spaced grid of T in
      [0.25, 4] that includes 1 (ties: the T nearest 1), so the fitted ECE is never above the raw one.
    - ``nll``: the lowest log-loss (Guo et al.'s objective), a bounded search over log T.

    They can disagree: with class weights the minority classes' probabilities are inflated, and the
    log-loss then asks for a sharper top label than the reliability of that label supports
    (docs/benchmarks.md, "Calibration on the quality benchmark": on the quality benchmark, T by NLL raised test ECE from 0.053 to
    0.085; T by ECE lowered it to 0.047)."""
    from .metrics import calibration as reliability
    if objective not in OBJECTIVES:
        raise ValueError(f"evaluate.calibration_objective must be one of {OBJECTIVES}, got {objective!r}")
    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0 or len(np.unique(y_true)) < 2:
        return 1.0
    if objective == "ece":
        scores = [(round(reliability(y_true, apply(probs, float(t)), n_bins)["ece"], 12), abs(np.log(t)), float(t))
                  for t in GRID]
        return min(scores)[2]
    from scipy.optimize import minimize_scalar
    res = minimize_scalar(lambda t: nll(y_true, apply(probs, float(np.exp(t)))),
                          bounds=tuple(np.log(BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def temperature(card: dict) -> float:
    """The card's fitted temperature; 1.0 (the raw outputs) for a model evaluate has not calibrated."""
    return float((card.get("calibration") or {}).get("temperature", 1.0))


def apply_card(card: dict, probs: np.ndarray) -> np.ndarray:
    return apply(probs, temperature(card))


def uncalibrated(card: dict) -> dict:
    """The card without its calibration: what evaluate scores with, to fit T on raw outputs."""
    return {k: v for k, v in card.items() if k != "calibration"}
