"""Executor side of scoring: the model loaded once per Python worker, images scored in batches.

Shared by ``score`` (archives) and, later, ``evaluate`` (dataset splits): bytes in, per-image
probabilities or a reject reason out, with exactly the preprocessing the model card names.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterator

import numpy as np
import pandas as pd

from .images import decode_each

_MODELS: dict[str, object] = {}


def score_schema():
    """What ``score_partition`` yields: probabilities, or a reject reason and detail."""
    from pyspark.sql.types import ArrayType, DoubleType, StringType, StructField, StructType
    return StructType([StructField("path", StringType()), StructField("sha256", StringType()),
                       StructField("probabilities", ArrayType(DoubleType())),
                       StructField("reason", StringType()), StructField("detail", StringType())])


def load_model(model_uri: str):
    """The Keras model at ``model_uri`` (any pyarrow filesystem), loaded once per process."""
    if model_uri not in _MODELS:
        import tensorflow as tf
        from . import storage
        fd, local = tempfile.mkstemp(suffix=".keras")
        with os.fdopen(fd, "wb") as fh:
            fh.write(storage.read_bytes(model_uri))
        try:
            _MODELS[model_uri] = tf.keras.models.load_model(local, compile=False)
        finally:
            os.remove(local)
    return _MODELS[model_uri]


def predict_arrays(model, card: dict, images: np.ndarray, batch_size: int) -> np.ndarray:
    from .models import preprocess
    x = preprocess(card["preprocessing"], images.astype(np.float32))
    return model.predict(x, batch_size=batch_size, verbose=0).astype(np.float64)


def score_partition(model_uri: str, card: dict, batch_size: int, max_pixels: int, threads: int):
    """mapInPandas function: ``path, sha256, content`` in; probabilities or reject reasons out."""
    size, resize = int(card["image_size"]), card["resize"]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialised in this reused worker
        model = load_model(model_uri)
        for batch in batches:
            arrays, reasons, details = decode_each(batch["content"], size, resize, max_pixels)
            good = [a for a in arrays if a is not None]
            probs = iter(predict_arrays(model, card, np.stack(good), batch_size) if good else [])
            rows = [None if a is None else list(next(probs)) for a in arrays]
            yield pd.DataFrame({"path": batch["path"], "sha256": batch["sha256"], "probabilities": rows,
                                "reason": reasons, "detail": details})
    return run
