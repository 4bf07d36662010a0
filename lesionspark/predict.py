"""Executor side of scoring: the model loaded once per Python worker, images scored in batches.

Shared by ``score`` (archives) and, later, ``evaluate`` (dataset splits): bytes in, per-image
probabilities or a reject reason out, with exactly the preprocessing the model card names.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from . import calibration, storage
from .clinical import FIELDS, card_fields, for_card, missing, sidecar_key
from .dicom import IDENTIFIERS, MAX_DECODED_BYTES
from .frames import decode_frames, image_chunks
from .images import decode_each
from .modelfile import check_file
from .overlays import write_overlays
from .threads import limit_threads

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
        with storage.local_copy(model_uri, suffix=".keras") as local:
            with open(local, "rb") as fh:  # only the classes lesionspark builds (modelfile.ALLOWED)
                check_file(fh)
            # safe_mode: a Lambda layer in a planted model file is refused, not deserialised and run
            _MODELS[model_uri] = tf.keras.models.load_model(local, compile=False, safe_mode=True)
    return _MODELS[model_uri]


def predict_arrays(model, card: dict, images: np.ndarray, batch_size: int, metadata=None) -> np.ndarray:
    """Calibrated probabilities of uint8 images; ``metadata``: their encoded vectors for a model
    that takes them (``clinical.for_card``)."""
    from .models import model_inputs, preprocess
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


def predict_batch(model, card: dict, contents, max_pixels: int, batch_size: int, metadata=None):
    """Decode dataset records' bytes and predict them: (probability lists or None, reasons, details).
    ``metadata``: one encoded vector per row for a model that takes them."""
    arrays, reasons, details = decode_each(contents, int(card["image_size"]), card["resize"], max_pixels)
    return predict_images(model, card, arrays, batch_size, metadata), reasons, details


def score_files_schema(passthrough: str) -> str:
    """What ``score_files`` yields, as a DDL string: the pass-through columns (DDL), then the hash,
    the frame and study identifiers of a DICOM image, the probabilities or a reason, the flagged
    image's overlay, and for a model with a metadata input the categories it was given (``age_group``,
    ``sex``, ``localization``: null where missing) and which were missing (``metadata_missing``:
    comma-joined, empty when none; null for an image-only model)."""
    ids = ", ".join(f"{k} string" for k in IDENTIFIERS)
    ours = (f"image_sha256 string, frame int, {ids}, probabilities array<double>, reason string, detail string, "
            "explanation_path string, metadata_missing string, age_group string, sex string, localization string")
    return f"{passthrough}, {ours}" if passthrough else ours


def explain_flagged(model, card: dict, arrays: list, probs: list, shas: list, metadata, threshold: float,
                    staging_dir: str, method: str, final_dir: str):
    """Heatmap overlays (``method``) of the images whose malignant probability reaches ``threshold``,
    written to ``staging_dir/<sha256>.png`` (named by content: a rerun rewrites the same file; the
    run's commit moves them to ``final_dir``): their final paths, or None (not flagged, or a map with
    no positive evidence)."""
    from .classes import malignant_outputs
    mal = malignant_outputs(card["classes"])
    flagged = [a if (a is not None and p is not None and sum(p[i] for i in mal) >= threshold) else None
               for a, p in zip(arrays, probs)]
    paths, _, _ = write_overlays(model, card, flagged, list(shas), staging_dir, method=method, metadata=metadata)
    return [None if p is None else final_dir + p[len(staging_dir):] for p in paths]


def read_alternate(reader, files: pd.DataFrame, i: int, fetched: tuple, max_bytes: int) -> tuple:
    """When file ``i`` is a known content whose chosen path could not be read (``unreadable``), its
    other paths (``alt_paths``) in order, until one's bytes still hash to the known content; ``files``
    then names that path (updated in place). (bytes, sha256, reason, detail): the first path's, or
    the alternate's. A content with no readable path stays an ``unreadable`` reject without a hash
    (tried again next run)."""
    if "known_sha256" not in files or fetched[2] != "unreadable":
        return fetched
    known, alts = files["known_sha256"].iat[i], files["alt_paths"].iat[i]
    if known is None or alts is None or not len(alts):
        return fetched
    for path, key, length in zip(alts, files["alt_keys"].iat[i], files["alt_lengths"].iat[i]):
        c, s, r, d = reader.fetch([path], [length], max_bytes, "score.max_file_bytes")
        if r[0] is None and s[0] == known:
            for column, value in (("path", path), ("path_key", key), ("length", length)):
                files.iloc[i, files.columns.get_loc(column)] = value
            return c[0], s[0], None, None
    return fetched


def score_files(reader, model_uri: str, card: dict, batch_size: int, max_pixels: int, threads: int,
                max_bytes: int, passthrough: list[str], clock=None, explain: tuple[float, str, str, str] | None = None,
                salt=None, sidecar: dict | None = None, max_decoded: int = MAX_DECODED_BYTES):
    """mapInPandas function over listed files (``path``, ``length`` and ``passthrough`` columns):
    each file is read once, hashed where its bytes are, decoded and predicted, a row per image
    (every frame of a DICOM object is one); files that cannot be scored carry a reason. Files are
    read and decoded one at a time and predicted ``batch_size`` images at a time
    (``frames.image_chunks``), so a worker's memory does not grow with the files' sizes. The model
    is loaded once per Python worker. ``explain``: (review threshold, staging folder, method, final
    folder): heatmap overlays of the flagged images, their paths in ``explanation_path``. ``salt``: a
    broadcast of the salt for the DICOM patient key (``dicom.patient_key``, ``pathkey.share``), or
    None. ``sidecar``: ``{image id: {field: value}}``
    for a model's metadata input (``image_metadata``). ``max_decoded``: an object's memory budget."""
    import time
    size, mode = int(card["image_size"]), card["resize"]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        limit_threads(threads)
        model = load_model(model_uri)
        secret = None if salt is None else salt.value
        for batch in batches:
            files, shas = batch.reset_index(drop=True), [None] * len(batch)
            spent = {"read_hash": 0.0, "decode": 0.0}

            def fetch(i):
                t0 = time.perf_counter()
                got = reader.fetch(files["path"].iloc[i:i + 1], files["length"].iloc[i:i + 1], max_bytes,
                                   "score.max_file_bytes")
                data, shas[i], reason, detail = read_alternate(reader, files, i, tuple(x[0] for x in got), max_bytes)
                spent["read_hash"] += time.perf_counter() - t0
                return data, reason, detail

            def decode(i, data, reason, detail):
                t0 = time.perf_counter()
                images = decode_frames([data], size, mode, max_pixels, secret, [reason], [detail], max_decoded,
                                       first=i)[0]
                spent["decode"] += time.perf_counter() - t0
                return images

            predict_s = 0.0
            for images in image_chunks(len(files), fetch, decode, batch_size):
                t0 = time.perf_counter()
                meta, used = image_metadata(card, images, chunk_metadata(card, files, images, "path", sidecar))
                rows = predict_images(model, card, [im.array for im in images], batch_size, meta)
                yield _image_rows(files[passthrough], images, shas, rows, model, card, explain, meta, used)
                predict_s += time.perf_counter() - t0
            if clock is not None:
                clock.add(files=len(batch), predict=predict_s, **spent)
    return run


def _image_rows(files: pd.DataFrame, images: list, shas: list, rows: list, model, card: dict,
                explain, meta, used: list) -> pd.DataFrame:
    """One output row per image: its file's pass-through columns, hash, frame, identifiers, result and
    the metadata categories the model was given."""
    out = files.iloc[[im.file for im in images]].reset_index(drop=True)
    out["image_sha256"] = [shas[im.file] for im in images]
    out["frame"] = pd.array([im.frame for im in images], dtype="Int32")
    for key in IDENTIFIERS:
        out[key] = [im.ids[key] for im in images]
    out["probabilities"] = rows
    out["reason"] = [im.reason for im in images]
    out["detail"] = [im.detail for im in images]
    # overlays are named by content, and by frame where a content holds several images
    names = [s if im.frame is None else f"{s}-f{im.frame}" for s, im in zip(out["image_sha256"], images)]
    out["explanation_path"] = explain_flagged(model, card, [im.array for im in images], rows, names, meta,
                                              *explain) if explain else [None] * len(out)
    out["metadata_missing"] = [None if u is None else missing(u) for u in used]
    for field, column in zip(FIELDS, ("age_group", "sex", "localization")):
        out[column] = [None if u is None else u.get(field) for u in used]
    return out


def score_partition(model_uri: str, card: dict, batch_size: int, max_pixels: int, threads: int):
    """mapInPandas function: ``path, sha256, content`` (and ``age, sex, localization`` for a model with
    a metadata input) in; probabilities or reject reasons out."""
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        limit_threads(threads)
        model = load_model(model_uri)
        for batch in batches:
            meta, _ = for_card(card, file_metadata(card, batch, "path", None))
            rows, reasons, details = predict_batch(model, card, list(batch["content"]), max_pixels, batch_size,
                                                   metadata=meta)
            yield pd.DataFrame({"path": batch["path"], "sha256": batch["sha256"], "probabilities": rows,
                                "reason": reasons, "detail": details})
    return run
