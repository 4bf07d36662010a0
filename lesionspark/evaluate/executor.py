"""Evaluate (executor side): each Spark task decodes a split's records and predicts them through
the shared predictor (``inference.predictor``): probabilities, or a reject reason and detail. The
driver half (``driver``) joins them to the labels and computes the metrics."""
from __future__ import annotations

from typing import Iterator

import pandas as pd

from ..dataset.clinical import for_card
from ..imaging.images import decode_each
from ..inference.predictor import Predictor, file_metadata, per_batch
from ..inference.spec import InferSpec


def predictions_schema():
    """What ``predict_records`` yields: probabilities, or a reject reason and detail."""
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType
    return StructType([StructField("path", StringType()), StructField("sha256", StringType()),
                       StructField("probabilities", ArrayType(DoubleType())),
                       StructField("reason", StringType()), StructField("detail", StringType())])


def predict_records(spec: InferSpec):
    """mapInPandas function over a split's records: ``path, sha256, content`` (and ``age, sex,
    localization`` for a model with a metadata input) in; probabilities or reject reasons out."""
    def handle(predictor: Predictor, batch: pd.DataFrame) -> Iterator[pd.DataFrame]:
        meta, _ = for_card(spec.card, file_metadata(spec.card, batch, "path", None))
        arrays, reasons, details = decode_each(list(batch["content"]), spec.size, spec.resize, spec.max_pixels)
        yield pd.DataFrame({"path": batch["path"], "sha256": batch["sha256"], "probabilities": predictor(arrays, meta),
                            "reason": reasons, "detail": details})
    return per_batch(spec, handle)
