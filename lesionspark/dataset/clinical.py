"""The patient's age, sex and the lesion's anatomic site as model inputs (pure functions, no Spark or
TensorFlow; ``load_sidecar`` alone reads a file). Imported by executors, Horovod ranks and the driver.

``model.metadata`` names the fields a model takes, in ``FIELDS`` order; ``encode`` turns them into
the model's ``metadata`` input, one-hot per field with the missing value as its own category:

- ``age``: decades ``0-9`` .. ``70-79`` and ``80+`` (HAM10000 gives ages in steps of 5 years);
- ``sex``: ``male``, ``female``;
- ``localization``: HAM10000's 14 anatomic sites (its ``unknown`` is the missing category).

The same function encodes training records (Horovod ranks), evaluation splits and scored images
(executors), so a model sees at scoring time exactly what it was trained on; the model card
records the fields and ``ENCODING``. Sources at scoring time: a DICOM object's ``PatientAge``,
``PatientSex`` and anatomic region (``from_dicom``), or a side-car CSV keyed by image id
(``read_sidecar``). The values themselves are never stored: the predictions table keeps the
categories the model was given (an age as its decade) and which fields were missing (``missing``).
"""
from __future__ import annotations

import csv
import logging
import math
import re

import numpy as np

from ..store import storage
from ..core.config import ConfigError
from .metadata import csv_lines

log = logging.getLogger(__name__)

ENCODING = "onehot-v1"
FIELDS = ("age", "sex", "localization")
AGE_EDGES = (10, 20, 30, 40, 50, 60, 70, 80)  # decades; 80 and over is one category
SEXES = ("male", "female")
SITES = ("abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand", "lower extremity", "neck",
         "scalp", "trunk", "upper extremity")
# DICOM anatomic regions (BodyPartExamined terms, SNOMED code meanings) to HAM10000's sites
SITE_SYNONYMS = {
    "abdomen": "abdomen", "abdominal": "abdomen", "back": "back", "upper back": "back", "lower back": "back",
    "chest": "chest", "thorax": "chest", "breast": "chest", "ear": "ear", "face": "face", "head": "face",
    "cheek": "face", "nose": "face", "forehead": "face", "lip": "face", "chin": "face", "foot": "foot",
    "toe": "foot", "sole": "acral", "palm": "acral", "acral": "acral", "genital": "genital", "genitals": "genital",
    "penis": "genital", "vulva": "genital", "scrotum": "genital", "hand": "hand", "finger": "hand",
    "lower extremity": "lower extremity", "lower limb": "lower extremity", "leg": "lower extremity",
    "thigh": "lower extremity", "knee": "lower extremity", "lowerlimb": "lower extremity", "extremity": None,
    "neck": "neck", "scalp": "scalp", "skull": "scalp", "trunk": "trunk", "pelvis": "trunk", "hip": "trunk",
    "upper extremity": "upper extremity", "upper limb": "upper extremity", "arm": "upper extremity",
    "upperlimb": "upper extremity", "shoulder": "upper extremity", "forearm": "upper extremity",
    "elbow": "upper extremity", "wrist": "upper extremity",
}
SIDECAR_MAX_BYTES = 256 << 20
_VOCAB = {"age": len(AGE_EDGES) + 1, "sex": len(SEXES), "localization": len(SITES)}


def check_fields(fields) -> tuple[str, ...]:
    """``model.metadata`` as a tuple in ``FIELDS`` order; ValueError for an unknown name."""
    fields = tuple(fields or ())
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise ValueError(f"model.metadata takes {', '.join(FIELDS)}; unknown: {', '.join(map(str, unknown))}")
    return tuple(f for f in FIELDS if f in fields)


def card_fields(card: dict) -> tuple[str, ...]:
    """The metadata a model takes, from its card (cards older than the metadata branch: none)."""
    return check_fields(card.get("metadata") or ())


def for_card(card: dict, rows: list[dict]) -> tuple[np.ndarray | None, list[dict | None]]:
    """``encode`` for the card's fields: (vectors, used) or (None, [None] * n) for an image-only model."""
    fields = card_fields(card)
    if not fields:
        return None, [None] * len(rows)
    return encode(fields, rows)


def width(fields) -> int:
    """Length of the encoded vector: each field's categories plus its missing category."""
    return sum(_VOCAB[f] + 1 for f in check_fields(fields))


def age_category(age) -> int | None:
    try:
        value = float(age)
    except (TypeError, ValueError):
        return None
    if math.isnan(value) or not 0 <= value < 130:
        return None
    return int(np.searchsorted(AGE_EDGES, value, side="right"))


def sex_category(sex) -> int | None:
    value = str(sex).strip().lower() if sex is not None else ""
    value = {"m": "male", "f": "female"}.get(value, value)
    return SEXES.index(value) if value in SEXES else None


def site_category(site) -> int | None:
    value = re.sub(r"\s+", " ", str(site).strip().lower().replace("_", " ")) if site is not None else ""
    value = SITE_SYNONYMS.get(value, value)
    return SITES.index(value) if value in SITES else None


_CATEGORY = {"age": age_category, "sex": sex_category, "localization": site_category}


AGE_LABELS = tuple(f"{lo}-{lo + 9}" for lo in (0,) + AGE_EDGES[:-1]) + (f"{AGE_EDGES[-1]}+",)
_LABELS = {"age": AGE_LABELS, "sex": SEXES, "localization": SITES}


def encode(fields, rows: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """(float32 [n, width] one-hot vectors, per row ``{field: category label or None when missing}``)
    for rows of ``{field: value}`` (absent keys and unreadable values are missing). The labels are
    what the model saw: an age as its decade, never the value."""
    fields = check_fields(fields)
    out = np.zeros((len(rows), width(fields)), np.float32)
    used = []
    for i, row in enumerate(rows):
        offset, seen = 0, {}
        for f in fields:
            cat = _CATEGORY[f](row.get(f))
            seen[f] = None if cat is None else _LABELS[f][cat]
            out[i, offset + (_VOCAB[f] if cat is None else cat)] = 1.0  # missing: the block's last category
            offset += _VOCAB[f] + 1
        used.append(seen)
    return out, used


def missing(used: dict) -> str:
    """The fields a row lacked, comma-joined (empty when it had them all)."""
    return ",".join(f for f, v in used.items() if v is None)


def dicom_age(value) -> float | None:
    """DICOM Age String (``045Y``, ``006M``, ``012W``, ``030D``) in years; None when absent or malformed."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", str(value or "").upper())
    if not m:
        return None
    return int(m.group(1)) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[m.group(2)]


def from_dicom(ds) -> dict:
    """Age, sex and anatomic site of a parsed DICOM object: PatientAge, PatientSex, then the anatomic
    region (AnatomicRegionSequence's code meaning, else BodyPartExamined). Values stay in memory."""
    site = None
    region = ds.get("AnatomicRegionSequence")
    if region:
        site = getattr(region[0], "CodeMeaning", None)
    if site_category(site) is None:
        site = ds.get("BodyPartExamined")
    return {"age": dicom_age(ds.get("PatientAge")), "sex": str(ds.get("PatientSex") or "") or None,
            "localization": None if site is None else str(site)}


def read_sidecar(text: str) -> dict[str, dict]:
    """A side-car CSV (``image_id`` plus any of ``age``, ``sex``, ``localization``) as
    ``{image_id: {field: value}}``; ValueError without an ``image_id`` column or with a repeated id.
    A line that is no CSV (an unterminated quote, a field over 128 KiB) is skipped on its own,
    counted in a warning by line number (never its content): its image is scored with the missing
    category, which ``predictions.metadata_missing`` records."""
    lines = csv_lines(text)
    _, header, error = next(lines, (1, None, None))
    header = [c.strip() for c in header or []]
    if error or "image_id" not in header:
        raise ValueError("the metadata side-car needs an image_id column (and any of age, sex, localization)")
    out: dict[str, dict] = {}
    skipped: list[int] = []
    for number, fields, error in lines:
        if error is not None:
            skipped.append(number)
            continue
        if not any(f.strip() for f in fields):
            continue  # a blank line
        row = {k: (v or "").strip() for k, v in zip(header, fields)}  # a short row: the rest empty
        key = row.get("image_id", "")
        if not key:
            continue
        if key in out:
            raise ValueError(f"the metadata side-car names image_id {key!r} twice")
        out[key] = {f: row[f] for f in FIELDS if row.get(f)}
    if skipped:
        log.warning("metadata side-car: %d malformed line(s) skipped (lines %s); their images get the missing "
                    "category", len(skipped), ", ".join(map(str, skipped[:20])) + (" ..." if len(skipped) > 20 else ""))
    return out


def drop_shared(spark, files, sidecar: dict | None, column: str = "path") -> dict | None:
    """``sidecar`` without the image ids that more than one listed file has (``IMG_0001.jpg`` in two
    patients' folders): the side-car is keyed by image id alone, so which patient a row is for is
    not known, and those files get the missing category instead of another patient's values.
    ``files``: the listing (a DataFrame with a ``column`` of paths)."""
    if not sidecar:
        return sidecar
    from pyspark.sql import functions as F
    from ..store.listing import STEM_FROM_PATH
    keys = spark.createDataFrame([(k,) for k in sidecar], "stem string")
    shared = {r["stem"] for r in files.select(F.regexp_extract(column, STEM_FROM_PATH, 1).alias("stem"))
              .join(keys, "stem").groupBy("stem").count().filter("count > 1").collect()}
    if shared:
        log.warning("metadata side-car: %d image id(s) name more than one file in the archive; those files get "
                    "the missing category", len(shared))
    return {k: v for k, v in sidecar.items() if k not in shared}


def load_sidecar(uri: str | None, fields) -> dict[str, dict] | None:
    """``archive.metadata_csv`` read (any storage URI, a regular file of at most ``SIDECAR_MAX_BYTES``)
    for a model that takes ``fields``; None without a file or for an image-only model. Runs on the
    driver. Anything else there (a FIFO, a folder, a link loop, a vanished or unparseable file) is a
    ``ConfigError`` naming it, before any work; nothing is opened that could block."""
    if not uri or not fields:
        return None
    uri = storage.normalize_uri(uri)
    try:
        return read_sidecar(storage.read_regular(uri, SIDECAR_MAX_BYTES).decode("utf-8-sig", errors="replace"))
    except (OSError, ValueError, csv.Error) as exc:
        raise ConfigError(f"archive.metadata_csv: {uri}: {exc}") from None


def sidecar_key(path: str) -> str:
    """The image id a file is looked up by in the side-car: its name without folders or extension."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name
