"""Explain (executor side): each Spark task reads or takes its images, predicts them through the
shared predictor (``inference.predictor``) and writes their heatmap overlays under the run's
staging folder; a table row per image (every frame of a DICOM object is one). The driver half
(``driver``) picks the images and publishes the table."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from ..inference.predictor import Predictor, per_batch
from ..inference.spec import InferSpec
from ..modeling.overlays import write_overlays


def explain_partition(spec: InferSpec, staging_overlays: str, final_overlays: str, reader=None,
                      sidecar: dict | None = None):
    """mapInPandas function: rows of ``image, source_path, true_dx`` and either ``content`` (bytes)
    or, with ``reader``, ``read_path`` and ``length`` (the file is read here, one at a time;
    ``source_path`` is what the table stores: the path or its salted hash); a model with a metadata
    input gets the rows' ``age, sex, localization``, or the DICOM tags and the side-car's
    (``predictor.file_metadata``). Writes overlays (``spec.heatmap``) under the staging folder; the
    table names their final paths."""
    def handle(predictor: Predictor, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        def fetch(i):
            if reader is None:
                return batch["content"].iat[i], None, None
            contents, _, reasons, details = reader.fetch(batch["read_path"].iloc[i:i + 1], batch["length"].iloc[i:i + 1],
                                                         spec.max_file_bytes, "archive.max_file_bytes")
            return contents[0], reasons[0], details[0]

        for images in predictor.chunks(len(batch), fetch):
            meta, _ = predictor.inputs(images, batch, "read_path" if reader else "source_path", sidecar)
            yield _explained(predictor, batch, images, staging_overlays, final_overlays, meta)
    return per_batch(spec, handle)


def _explained(predictor: Predictor, batch: pd.DataFrame, images: list, staging_overlays: str,
               final_overlays: str, meta) -> pd.DataFrame:
    """The table rows of a chunk of images (every frame of a DICOM object is one, named
    ``<image>-f<frame>``), their overlays written under the staging folder."""
    classes = predictor.spec.classes
    names = [batch["image"].iat[im.file] + ("" if im.frame is None else f"-f{im.frame}") for im in images]
    written, probs, blank, _ = write_overlays(predictor.model, predictor.card, [im.array for im in images], names,
                                           staging_overlays, method=predictor.spec.heatmap, metadata=meta)
    out = batch[["image", "source_path", "true_dx"]].iloc[[im.file for im in images]].reset_index(drop=True)
    out["image"] = names
    out["predicted_dx"] = [None if p is None else classes[int(np.argmax(p))] for p in probs]
    out["confidence"] = [None if p is None else float(np.max(p)) for p in probs]
    out["overlay_path"] = [None if w is None else final_overlays + w[len(staging_overlays):] for w in written]
    out["explanation_empty"] = blank
    out["reason"], out["detail"] = [im.reason for im in images], [im.detail for im in images]
    return out
