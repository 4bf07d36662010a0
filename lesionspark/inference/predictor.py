"""The one predictor of score, evaluate and explain, in executors: the model loaded once per Python
worker (``Predictor.__init__``), then called per chunk of decoded images with exactly the
preprocessing, calibration and metadata inputs the model card names. ``per_batch`` is the
``mapInPandas`` skeleton the three stages share: limit threads, load the model, handle each batch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from ..modeling import calibration
from ..store import storage
from ..dataset.clinical import FIELDS, card_fields, for_card, sidecar_key
from ..imaging.frames import decode_frames, image_chunks
from ..store.modelfile import check_file
from ..core.threads import limit_threads
from .spec import InferSpec

_MODELS: dict[str, object] = {}


def load_model(model_uri: str):
    """The Keras model at ``model_uri`` (any pyarrow filesystem), loaded once per process."""
    if model_uri not in _MODELS:
        import tensorflow as tf
        with storage.local_copy(model_uri, suffix=".keras") as local:
            with open(local, "rb") as fh:  # only the classes lesionspark builds (modelfile.ALLOWED)
                check_file(fh)
            # safe_mode: a Lambda layer in a planted model file is refused, not deserialised and run
            _MODELS[model_uri] = tf.keras.models.load_model(local, compile=False, safe_mode=True)
    return _MODELS[model_uri]


def predict_arrays(model, card: dict, images: np.ndarray, batch_size: int, metadata=None) -> np.ndarray:
    """Calibrated probabilities of uint8 images; ``metadata``: their encoded vectors for a model
    that takes them (``clinical.for_card``)."""
    from ..modeling.models import model_inputs, preprocess
    x = preprocess(card["preprocessing"], images.astype(np.float32))
    return calibration.apply_card(card, model.predict(model_inputs(model, x, metadata), batch_size=batch_size,
                                                      verbose=0))


def predict_images(model, card: dict, arrays: list, batch_size: int, metadata=None) -> list:
    """Probability lists for decoded images, in order; None where the image is None (a reject).
    ``metadata``: one encoded vector per image (rows of rejects included), or None. Stacked and
    made float32 ``batch_size`` images at a time."""
    keep = [i for i, a in enumerate(arrays) if a is not None]
    out: list = [None] * len(arrays)
    for at in range(0, len(keep), batch_size):
        part = keep[at:at + batch_size]
        meta = None if metadata is None else metadata[part]
        for i, p in zip(part, predict_arrays(model, card, np.stack([arrays[i] for i in part]), batch_size, meta)):
            out[i] = list(p)
    return out


def file_metadata(card: dict, batch: pd.DataFrame, path_column: str, sidecar: dict | None) -> list[dict]:
    """Per file of ``batch``, what is known of its patient for a model's metadata input: the batch's
    own ``age``/``sex``/``localization`` columns (dataset records), else the side-car CSV row of the
    file's image id (``clinical.sidecar_key``); empty for an image-only model."""
    if not card_fields(card):
        return [{}] * len(batch)
    own = [f for f in FIELDS if f in batch]
    if own:
        return batch[own].to_dict("records")
    return [dict((sidecar or {}).get(sidecar_key(str(p)), {})) for p in batch[path_column]]


def chunk_metadata(card: dict, files: pd.DataFrame, images: list, path_column: str, sidecar: dict | None) -> dict:
    """``file_metadata`` of the files a chunk of images comes from only, by file number: what
    ``image_metadata`` takes as ``per_file``."""
    numbers = sorted({im.file for im in images})
    return dict(zip(numbers, file_metadata(card, files.iloc[numbers], path_column, sidecar)))


def image_metadata(card: dict, images: list, per_file):
    """(encoded vectors or None, used categories per image): the file's metadata (``file_metadata``)
    with what a DICOM object says of itself (age, sex, anatomic site) taking precedence; missing values
    get the missing category."""
    rows = [{**per_file[im.file], **{k: v for k, v in im.clinical.items() if v not in (None, "")}} for im in images]
    return for_card(card, rows)


class Predictor:
    """A spec's model in this Python worker: loaded once (``load_model`` caches it per process),
    called per chunk of images."""

    def __init__(self, spec: InferSpec):
        limit_threads(spec.threads)
        self.spec = spec
        self.card = spec.card
        self.model = load_model(spec.model_uri)

    def __call__(self, arrays: list, metadata=None) -> list:
        """Probability lists of decoded images, in order; None where an image is None (a reject)."""
        return predict_images(self.model, self.card, arrays, self.spec.batch_size, metadata)

    def decode(self, i: int, data, reason, detail, salt=None) -> list:
        """The images of file ``i``'s bytes (every frame of a DICOM object is one), or one reject
        carrying ``reason``; ``salt`` keys a DICOM object's patient (``dicom.patient_key``)."""
        s = self.spec
        return decode_frames([data], s.size, s.resize, s.max_pixels, salt, [reason], [detail], s.max_decoded,
                             first=i)[0]

    def chunks(self, n_files: int, fetch, decode=None) -> Iterator[list]:
        """Files ``0..n_files-1`` read (``fetch(i)`` -> bytes, reason, detail) and decoded one at a
        time, yielded ``batch_size`` images at a time (``frames.image_chunks``)."""
        return image_chunks(n_files, fetch, decode or self.decode, self.spec.batch_size)

    def inputs(self, images: list, files: pd.DataFrame, path_column: str, sidecar: dict | None):
        """(encoded metadata vectors or None, categories used per image) of a chunk of images."""
        return image_metadata(self.card, images, chunk_metadata(self.card, files, images, path_column, sidecar))


def per_batch(spec: InferSpec, handle):
    """``mapInPandas`` function: a ``Predictor`` made once per task, then ``handle(predictor, batch)``
    (a generator of frames) for each Arrow batch, its index reset."""
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        predictor = Predictor(spec)
        for batch in batches:
            yield from handle(predictor, batch.reset_index(drop=True))
    return run
