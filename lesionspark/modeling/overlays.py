"""Heatmap overlays of images (runs wherever it is called: executors for explain and score, the
driver for the report's grid): predict with the heatmap method, apply the card's calibration, draw
the map over the image, write PNGs. An image whose map has no positive evidence gets no overlay.
"""
from __future__ import annotations

import numpy as np

from . import calibration
from ..store import storage
from .gradcam import empty, heatmaps, overlay, png
from .models import preprocess

DEFAULT_METHOD = "hirescam"  # inference.heatmap: chosen by evidence, docs/benchmarks.md ("Heatmaps")


def explain_arrays(model, card: dict, images: np.ndarray, method: str = DEFAULT_METHOD, metadata=None):
    """(heatmaps [B,H,W] 0..1, calibrated probabilities [B,classes], overlays uint8 [B,H,W,3] or None
    where the map is empty: no positive evidence) of uint8 images (``metadata``: their encoded vectors
    for a model with a metadata input)."""
    cams, probs = heatmaps(model, preprocess(card["preprocessing"], images.astype(np.float32)), method=method,
                           metadata=metadata)
    blank = empty(cams)
    overlays = [None if b else overlay(im, cam) for im, cam, b in zip(images, cams, blank)]
    return cams, calibration.apply_card(card, probs), overlays


def write_overlays(model, card: dict, images: list, names: list[str], out_dir: str, batch_size: int = 32,
                   method: str = DEFAULT_METHOD, metadata=None):
    """Explain ``images`` (uint8 arrays, None for a reject; ``metadata`` one encoded vector per image
    or None) and write ``out_dir/<name>.png`` for each with a non-empty map: (overlay paths or None,
    probabilities or None, empty flags or None, heatmaps [H,W] 0..1 or None) per image."""
    paths, probs, blank, maps = [None] * len(images), [None] * len(images), [None] * len(images), [None] * len(images)
    good = [i for i, im in enumerate(images) if im is not None]
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        meta = None if metadata is None else np.asarray(metadata)[chunk]
        cams, p, over = explain_arrays(model, card, np.stack([images[i] for i in chunk]), method, meta)
        for j, i in enumerate(chunk):
            probs[i], blank[i], maps[i] = p[j], over[j] is None, cams[j]
            if over[j] is not None:
                paths[i] = f"{out_dir}/{names[i]}.png"
                storage.write_bytes(paths[i], png(over[j]))
    return paths, probs, blank, maps
