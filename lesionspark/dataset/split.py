"""Lesion-grouped, class-stratified, seeded train/val/test assignment (pure pandas/numpy).

Runs on the driver.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..core.classes import CLASSES

SPLITS = ("train", "val", "test")


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    fr = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(v < 0 for v in fr.values()) or abs(sum(fr.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fr}")
    return fr


def lesion_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per lesion: its stratum (most frequent dx, ties alphabetical) and image count."""
    counts = records.groupby(["lesion_id", "dx"]).size().rename("n").reset_index()
    counts = counts.sort_values(["lesion_id", "n", "dx"], ascending=[True, False, True])
    first = counts.drop_duplicates("lesion_id")[["lesion_id", "dx"]]
    sizes = records.groupby("lesion_id").size().rename("n_images").reset_index()
    return first.merge(sizes, on="lesion_id").sort_values("lesion_id").reset_index(drop=True)


def assign_splits(records: pd.DataFrame, fractions: Mapping[str, float], seed: int) -> pd.Series:
    """Split label per record, with every image of a lesion in exactly one split.

    Within each class, lesions are shuffled with a generator seeded by (seed, class) and each is
    given to the split furthest below its target image count, so per-class image proportions
    track the fractions to within one lesion. Adding or removing a class does not change the
    assignment of the others.
    """
    fr = check_fractions(fractions)
    lesions = lesion_table(records)
    assignment: dict[str, str] = {}
    strata = sorted(lesions["dx"].unique(), key=lambda d: (CLASSES.index(d) if d in CLASSES else 99, d))
    for stratum in strata:
        group = lesions[lesions["dx"] == stratum]
        key = CLASSES.index(stratum) if stratum in CLASSES else sum(map(ord, stratum))
        order = np.random.default_rng([int(seed), key]).permutation(len(group))
        total = group["n_images"].sum()
        target = np.array([fr[s] * total for s in SPLITS])
        have = np.zeros(len(SPLITS))
        ids = group["lesion_id"].to_numpy()
        sizes = group["n_images"].to_numpy()
        for i in order:
            deficit = target - have
            # Largest deficit; a split with fraction 0 never receives anything.
            deficit[target == 0] = -np.inf
            j = int(np.argmax(deficit))
            assignment[ids[i]] = SPLITS[j]
            have[j] += sizes[i]
    return records["lesion_id"].map(assignment)
