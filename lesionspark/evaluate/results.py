"""Scored splits as pandas frames (driver side): the rows that were scored, their probabilities and
true labels, and the frame with its probabilities temperature-scaled. Shared by evaluate and report.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..modeling import calibration
from ..core.classes import is_binary, malignant_outputs


def scored(frame: pd.DataFrame, classes: list[str]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The rows that were scored, their probabilities (rows x classes) and malignant probability."""
    good = frame[frame["reason"].isna()].reset_index(drop=True)
    probs = np.array(good["probabilities"].tolist(), dtype=np.float64).reshape(len(good), len(classes))
    return good, probs, probs[:, malignant_outputs(classes)].sum(axis=1)


def truth(good: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """True labels in the model's classes: ``malignant`` for a binary model, ``label`` otherwise."""
    return good["malignant" if is_binary(classes) else "label"].to_numpy().astype(int)


def calibrate_frame(frame: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """The frame with its probabilities temperature-scaled (rejected rows stay None)."""
    ok = frame["probabilities"].notna().to_numpy()
    out = list(frame["probabilities"])
    if ok.any():
        cal = calibration.apply(np.array([out[i] for i in np.flatnonzero(ok)], dtype=np.float64), temperature)
        for j, i in enumerate(np.flatnonzero(ok)):
            out[i] = list(cal[j])
    return frame.assign(probabilities=out)
