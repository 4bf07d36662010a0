"""Measures that the quality tests and the benchmarks share, not used by the library itself: how
many images one output answers, how much of a heatmap sits on the lesion, and the lesion mask of a
generated image (the generator's ground truth)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from lesionspark.imaging.synth import lesion_params, render


def largest_identical_group(probs: np.ndarray, decimals: int = 4) -> int:
    """How many images share the most common output (probabilities rounded to ``decimals``): a
    model whose features died answers many distinct images with one identical vector."""
    if len(probs) == 0:
        return 0
    _, counts = np.unique(np.round(np.asarray(probs, dtype=np.float64), decimals), axis=0, return_counts=True)
    return int(counts.max())


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's mass inside ``mask`` (NaN for an all-zero heatmap)."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else float("nan")


def lesion_mask(lesion_id: str, image_id: str, dx: str, seed: int, size: int, width: int = 600,
                height: int = 450) -> np.ndarray:
    """The lesion mask of a generated image as ingest squashes it to ``size`` x ``size`` (bool):
    ground truth for where a model should look."""
    _, mask = render(lesion_params(lesion_id, dx, seed), image_id, seed, width, height, with_mask=True)
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)) >= 128
