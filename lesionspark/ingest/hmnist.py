"""Ingest the Kaggle ``hmnist_<s>_<s>_{L,RGB}.csv`` pixel files (seed data of HAM10000 images).

They carry pixels and a label only: no image, lesion or patient ids. Each row therefore becomes
its own pseudo-lesion, and the manifest records ``lesion_grouped: false``: the images of one
lesion may land in different splits, which inflates scores (use the metadata CSV + JPEGs where
you can). Label codes: 0 akiec, 1 bcc, 2 bkl, 3 df, 4 nv, 5 vasc, 6 mel (checked by class
counts: only nv has 6,705 rows).

Driver side: a Spark job; the pixel rows are encoded in executors.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from typing import Iterator

import numpy as np
import pandas as pd
from PIL import Image

from ..store import storage
from ..core.classes import HMNIST_LABELS, LABEL_OF, binary_label
from ..core.config import Config
from ..dataset.writer import located_schema, write_dataset, writing_decoder
from ..imaging.images import ImageRejected, sha256_hex
from ..dataset.schema import FIELD_NAMES, encode_image, lesion_schema
from ..dataset.split import assign_splits, check_fractions

log = logging.getLogger(__name__)

GENUINE_COUNTS = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}


def parse_header(header: str) -> tuple[int, int]:
    """(side, channels) from the header ``pixel0000,...,label``."""
    cols = [c.strip().strip('"') for c in header.split(",")]
    if not cols or cols[-1] != "label" or not all(re.fullmatch(r"pixel\d+", c) for c in cols[:-1]):
        raise ValueError("not an hmnist header: expected pixel0000,...,pixelNNNN,label")
    n = len(cols) - 1
    for channels in (3, 1):
        side = math.isqrt(n // channels)
        if side * side * channels == n:
            return side, channels
    raise ValueError(f"{n} pixel columns is neither s*s (L) nor s*s*3 (RGB)")


def parse_row(line: str, side: int, channels: int) -> tuple[np.ndarray, str]:
    """One data line -> (side x side x 3 uint8, dx). Raises ImageRejected on a bad row."""
    fields = line.split(",")
    n = side * side * channels
    if len(fields) != n + 1:
        raise ImageRejected("malformed_csv_row", f"expected {n + 1} fields, got {len(fields)}")
    try:
        values = np.array(fields[:-1], dtype=np.int64)
        code = int(fields[-1])
    except ValueError:
        raise ImageRejected("malformed_csv_row", "non-integer pixel or label value") from None
    if values.min() < 0 or values.max() > 255:
        raise ImageRejected("pixel_out_of_range", "pixel values must be 0..255")
    if code not in HMNIST_LABELS:
        raise ImageRejected("unknown_dx", f"label {code} is not one of 0..6")
    img = values.astype(np.uint8).reshape(side, side, channels)
    if channels == 1:
        img = np.repeat(img, 3, axis=2)
    return img, HMNIST_LABELS[code]


def check_label_map(counts: dict[str, int]) -> list[str]:
    """Warnings when class counts contradict the label map (e.g. a file with another code order)."""
    warnings = []
    total = sum(counts.values())
    if total == sum(GENUINE_COUNTS.values()) and counts != GENUINE_COUNTS:
        warnings.append(f"class counts {counts} differ from HAM10000's {GENUINE_COUNTS}: check the label map")
    if total >= 100 and counts and max(counts, key=counts.get) != "nv":
        warnings.append(f"nv (label 4) is not the largest class ({counts}): check the label map")
    return warnings


def _decode(size: int, side: int, channels: int, source: str):
    schema = lesion_schema(size)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            out = {c: [] for c in list(FIELD_NAMES) + ["split", "reason", "detail"]}
            for row, line, split in zip(batch["row"], batch["value"], batch["split"]):
                image_id = f"hmnist_{side}_{'RGB' if channels == 3 else 'L'}_{row:06d}"
                rec = dict.fromkeys(out)
                rec.update(image_id=image_id, lesion_id=f"hmnist-{row:06d}", dx_type="unknown", sex="unknown",
                           localization="unknown", source=f"{source}#row={row}",
                           sha256=sha256_hex(line.encode()), split=split)
                try:
                    img, dx = parse_row(line, side, channels)
                    if side != size:
                        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
                    rec.update(dx=dx, label=LABEL_OF[dx], malignant=binary_label(dx),
                               image=encode_image(schema, img))
                except ImageRejected as rej:
                    rec.update(reason=rej.code, detail=rej.detail)
                for k in out:
                    out[k].append(rec[k])
            df = pd.DataFrame(out)
            df["label"] = df["label"].astype("float64")  # nullable for rejected rows (written ones are whole)
            yield df
    return run


def ingest_hmnist(spark, cfg: Config, run_id: str | None = None) -> dict:
    from pyspark.sql import functions as F

    t_start = time.perf_counter()
    run_id = run_id or storage.new_run_id()
    uri = storage.normalize_uri(cfg.get("ingest.hmnist"))
    size = int(cfg.get("dataset.image_size"))
    lines = spark.read.text(uri)
    header = lines.first()
    if header is None:
        raise ValueError(f"{uri}: empty file")
    side, channels = parse_header(header.value)
    log.warning("hmnist input %s (%dx%d %s): no lesion ids, so the split is NOT grouped by lesion; "
                "scores on it are optimistic", uri, side, side, "RGB" if channels == 3 else "L")
    rows = lines.rdd.zipWithIndex().filter(lambda t: t[1] > 0) \
        .map(lambda t: (t[1] - 1, t[0].value)).toDF("row long, value string")
    rows = rows.filter(F.length(F.trim("value")) > 0).cache()
    # The label is the last field: enough to stratify the split without decoding anything.
    labels = rows.select("row", F.substring_index("value", ",", -1).alias("code")).toPandas()
    dx = pd.to_numeric(labels["code"], errors="coerce").map(HMNIST_LABELS)
    strata = pd.DataFrame({"row": labels["row"], "lesion_id": "hmnist-" + labels["row"].astype(str),
                           "dx": dx.fillna("unknown")})
    strata["split"] = assign_splits(strata, check_fractions(cfg.get("ingest.split")), int(cfg.get("ingest.split.seed")))
    counts = strata[strata["dx"] != "unknown"]["dx"].value_counts().to_dict()
    for w in check_label_map(counts):
        log.warning(w)
    split_df = spark.createDataFrame(strata[["row", "split"]])
    joined = rows.join(F.broadcast(split_df), "row")

    def decode(parts_uri: str):
        return joined.mapInPandas(writing_decoder(_decode(size, side, channels, uri), parts_uri, size, cfg),
                                  located_schema())
    n_rows = len(strata)
    records = strata[strata["dx"] != "unknown"].assign(lesion_id=lambda d: d["lesion_id"])
    inputs = {"hmnist": uri, "rows": n_rows, "total": n_rows}
    digest = hashlib.sha256(f"{uri}|{n_rows}".encode()).hexdigest()
    manifest = write_dataset(spark, cfg, run_id, decode, [], records, inputs, digest,
                             f"decode hmnist rows to {size}px",
                             extra={"lesion_grouped": False,
                                    "warning": "hmnist has no lesion ids: split not grouped by lesion"})
    rows.unpersist()
    log.info("ingest (hmnist): done in %.1fs", time.perf_counter() - t_start)
    return manifest
