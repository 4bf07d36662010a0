"""Score (executor side): each Spark task reads its listed files one at a time, hashes, decodes and
predicts them through the shared predictor (``inference.predictor``), one row per image (every
frame of a DICOM object is one) or per reject, and stages flagged images' overlays. The driver half
(``driver``) plans the run and commits the tables."""
from __future__ import annotations

import time
from typing import Iterator

import pandas as pd

from ..core.classes import malignant_probability
from ..dataset.clinical import FIELDS, missing
from ..imaging.dicom import IDENTIFIERS
from ..inference.predictor import Predictor, per_batch
from ..inference.spec import InferSpec
from ..modeling.overlays import write_overlays
from .dicom_out import DicomOut


def score_files_schema(passthrough: str) -> str:
    """What ``score_files`` yields, as a DDL string: the pass-through columns (DDL), then the hash,
    the frame and study identifiers of a DICOM image, the probabilities or a reason, the flagged
    image's overlay, and for a model with a metadata input the categories it was given (``age_group``,
    ``sex``, ``localization``: null where missing) and which were missing (``metadata_missing``:
    comma-joined, empty when none; null for an image-only model)."""
    ids = ", ".join(f"{k} string" for k in IDENTIFIERS)
    ours = (f"image_sha256 string, frame int, {ids}, probabilities array<double>, reason string, detail string, "
            "explanation_path string, metadata_missing string, age_group string, sex string, localization string, "
            "dicom_sr_uid string, dicom_sr_path string, dicom_seg_uid string, dicom_seg_path string, dicom_note string")
    return f"{passthrough}, {ours}" if passthrough else ours


def explain_flagged(predictor: Predictor, arrays: list, probs: list, shas: list, metadata, threshold: float,
                    staging_dir: str, final_dir: str):
    """Heatmap overlays (``spec.heatmap``) of the images whose malignant probability reaches ``threshold``,
    written to ``staging_dir/<sha256>.png`` (named by content: a rerun rewrites the same file; the
    run's commit moves them to ``final_dir``): (their final paths, or None: not flagged, or a map
    with no positive evidence; their heatmaps, or None where not flagged)."""
    classes = predictor.spec.classes
    flagged = [a if (a is not None and p is not None and malignant_probability(p, classes) >= threshold) else None
               for a, p in zip(arrays, probs)]
    paths, _, _, maps = write_overlays(predictor.model, predictor.card, flagged, list(shas), staging_dir,
                                       method=predictor.spec.heatmap, metadata=metadata)
    return [None if p is None else final_dir + p[len(staging_dir):] for p in paths], maps


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
        c, s, r, d = reader.fetch([path], [length], max_bytes, "archive.max_file_bytes")
        if r[0] is None and s[0] == known:
            for column, value in (("path", path), ("path_key", key), ("length", length)):
                files.iloc[i, files.columns.get_loc(column)] = value
            return c[0], s[0], None, None
    return fetched


def score_files(spec: InferSpec, reader, passthrough: list[str], clock=None,
                explain: tuple[float, str, str] | None = None, salt=None, sidecar: dict | None = None,
                dicom: DicomOut | None = None):
    """mapInPandas function over listed files (``path``, ``length`` and ``passthrough`` columns):
    each file is read once, hashed where its bytes are, decoded and predicted, a row per image
    (every frame of a DICOM object is one); files that cannot be scored carry a reason. Files are
    read and decoded one at a time and predicted ``batch_size`` images at a time, so a worker's
    memory does not grow with the files' sizes. ``explain``: (review threshold, staging folder,
    final folder): heatmap overlays (``spec.heatmap``) of the flagged images, their paths in
    ``explanation_path``. ``salt``: a broadcast of the salt for the DICOM patient key
    (``dicom.patient_key``, ``pathkey.share``), or None. ``sidecar``: ``{image id: {field: value}}``
    for a model's metadata input (``predictor.image_metadata``). ``dicom``: DICOM result objects
    (``dicom_out``) for the images of DICOM objects, staged like the overlays, named in ``dicom_*``."""
    def handle(predictor: Predictor, files: pd.DataFrame) -> Iterator[pd.DataFrame]:
        secret = None if salt is None else salt.value
        shas, spent, predict_s = [None] * len(files), {"read_hash": 0.0, "decode": 0.0}, 0.0

        def fetch(i):
            t0 = time.perf_counter()
            got = reader.fetch(files["path"].iloc[i:i + 1], files["length"].iloc[i:i + 1], spec.max_file_bytes,
                               "archive.max_file_bytes")
            data, shas[i], reason, detail = read_alternate(reader, files, i, tuple(x[0] for x in got),
                                                           spec.max_file_bytes)
            spent["read_hash"] += time.perf_counter() - t0
            return data, reason, detail

        def decode(i, data, reason, detail):
            t0 = time.perf_counter()
            images = predictor.decode(i, data, reason, detail, secret)
            spent["decode"] += time.perf_counter() - t0
            return images

        for images in predictor.chunks(len(files), fetch, decode):
            t0 = time.perf_counter()
            meta, used = predictor.inputs(images, files, "path", sidecar)
            rows = predictor([im.array for im in images], meta)
            yield _image_rows(files[passthrough], images, shas, rows, predictor, explain, meta, used, dicom)
            predict_s += time.perf_counter() - t0
        if clock is not None:
            clock.add(files=len(files), predict=predict_s, **spent)
    return per_batch(spec, handle)


def _image_rows(files: pd.DataFrame, images: list, shas: list, rows: list, predictor: Predictor,
                explain, meta, used: list, dicom: DicomOut | None = None) -> pd.DataFrame:
    """One output row per image: its file's pass-through columns, hash, frame, identifiers, result,
    the metadata categories the model was given and its DICOM result objects."""
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
    out["explanation_path"], maps = explain_flagged(predictor, [im.array for im in images], rows, names, meta,
                                                    *explain) if explain else ([None] * len(out), [None] * len(out))
    out["metadata_missing"] = [None if u is None else missing(u) for u in used]
    for field, column in zip(FIELDS, ("age_group", "sex", "localization")):
        out[column] = [None if u is None else u.get(field) for u in used]
    written = [dicom.write(im, p, m) if dicom else {} for im, p, m in zip(images, rows, maps)]
    for column in ("dicom_sr_uid", "dicom_sr_path", "dicom_seg_uid", "dicom_seg_path", "dicom_note"):
        out[column] = [w.get(column) for w in written]
    return out
