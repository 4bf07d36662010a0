"""Parse and validate the HAM10000 metadata CSV (pure: text in, records and rejects out).

Runs on the driver (the file is small: about 100 bytes a row).
"""
from __future__ import annotations

import csv
import math
import re

import pandas as pd

from ..core.classes import CLASSES, LABEL_OF, binary_label

REQUIRED = ("lesion_id", "image_id", "dx")
OPTIONAL = ("dx_type", "age", "sex", "localization")
COLUMNS = REQUIRED + OPTIONAL
REJECT_COLUMNS = ["image_id", "source", "reason", "detail"]  # a reject row, in every stage
REJECT_SCHEMA = ", ".join(f"{c} string" for c in REJECT_COLUMNS)


class MetadataError(ValueError):
    """The metadata file as a whole is unusable (no header, required columns missing)."""


def _age(raw: str) -> float | None:
    raw = raw.strip()
    if raw == "":
        return None
    value = float(raw)  # ValueError for junk; the caller turns it into a reject
    if math.isnan(value) or not 0 <= value <= 130:
        raise ValueError(f"age {raw!r} out of range")
    return value


def csv_lines(text: str):
    """(line number, fields or None, error or None) for each line of a CSV text, each line parsed on
    its own: a record is one line (HAM10000's and the side-car's are), so an unterminated quote or a
    field over the csv module's limit (128 KiB) spoils its own line only, never the lines after it."""
    lines = re.split(r"\r\n|\r|\n", text.lstrip("\ufeff"))
    if lines[-1] == "":
        lines.pop()  # the end of the last line, or of an empty text
    for number, line in enumerate(lines, start=1):
        try:
            rows = list(csv.reader([line], strict=True))
        except csv.Error as exc:
            yield number, None, f"not a CSV line ({exc})"
            continue
        yield number, (rows[0] if rows else []), None


def _header(reader, source: str) -> tuple[list[str], dict[str, int]]:
    """(header, column index of each known column); a MetadataError without the required ones."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise MetadataError(f"{source}: the metadata file is empty") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise MetadataError(f"{source}: the header {header} lacks the required column(s) {missing}; "
                            f"expected {','.join(COLUMNS)}")
    return header, {name: header.index(name) for name in COLUMNS if name in header}


def _record(fields: list[str], n_columns: int, index: dict[str, int], line: int):
    """One CSV row: (record, None) when usable, else (None, (image_id, reason, detail))."""
    image_id = fields[index["image_id"]].strip() if len(fields) > index["image_id"] else None
    if len(fields) != n_columns:
        return None, (image_id or None, "malformed_csv_row", f"expected {n_columns} fields, got {len(fields)}")
    row = {name: fields[i].strip() for name, i in index.items()}
    empty = [c for c in REQUIRED if not row[c]]
    if empty:
        return None, (row["image_id"] or None, "missing_field", f"empty {', '.join(empty)}")
    dx = row["dx"].lower()
    if dx not in LABEL_OF:
        return None, (row["image_id"], "unknown_dx", f"dx {row['dx']!r} is not one of {', '.join(CLASSES)}")
    try:
        age = _age(row.get("age", ""))
    except ValueError as exc:
        return None, (row["image_id"], "invalid_age", str(exc))
    return {"image_id": row["image_id"], "lesion_id": row["lesion_id"], "dx": dx, "label": LABEL_OF[dx],
            "malignant": binary_label(dx), "dx_type": row.get("dx_type") or "unknown", "age": age,
            "sex": row.get("sex") or "unknown", "localization": row.get("localization") or "unknown",
            "line": line}, None


def _duplicate_ids(records: pd.DataFrame) -> list[tuple[int, str, str]]:
    """(line, image_id, detail) of every row to drop for a duplicated image_id: identical repeats
    keep the first row, conflicting ones are all rejected."""
    content = ["lesion_id", "dx", "dx_type", "age", "sex", "localization"]
    out = []
    for image_id, rows in records[records.duplicated("image_id", keep=False)].groupby("image_id", sort=False):
        if len(rows[content].astype(str).drop_duplicates()) == 1:
            first = rows["line"].min()
            out += [(line, image_id, f"repeats line {first}") for line in rows["line"] if line != first]
        else:
            lines = ", ".join(map(str, rows["line"]))
            out += [(line, image_id, f"conflicting rows for one image at lines {lines}") for line in rows["line"]]
    return out


def parse_metadata(text: str, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(records, rejects)``.

    ``records`` has one row per usable metadata row: the lesion-record fields (docs/contracts.md) plus ``label``,
    ``malignant`` and ``line``. ``rejects`` has ``image_id, source, reason, detail`` for every row
    that was not usable: malformed CSV rows, missing fields, unknown ``dx``, invalid ``age``,
    duplicated ``image_id`` (an identical repeat keeps the first row; conflicting repeats are all
    rejected). Every data line of the file ends up in exactly one of the two (``csv_lines``: a line
    that is no CSV, such as one with an unterminated quote, is a ``malformed_csv_row`` of its own).
    """
    lines = (fields if error is None else [] for _, fields, error in csv_lines(text))
    header, index = _header(lines, source)
    good, bad = [], []
    for number, fields, error in csv_lines(text):
        if number == 1:
            continue
        if error is not None:
            bad.append({"image_id": None, "source": f"{source}:{number}", "reason": "malformed_csv_row",
                        "detail": error})
            continue
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line: not a record
        record, rejected = _record(fields, len(header), index, number)
        if record is not None:
            good.append(record)
        else:
            image_id, reason, detail = rejected
            bad.append({"image_id": image_id, "source": f"{source}:{number}", "reason": reason,
                        "detail": detail})
    records = pd.DataFrame(good, columns=["image_id", "lesion_id", "dx", "label", "malignant", "dx_type",
                                          "age", "sex", "localization", "line"])
    dropped = _duplicate_ids(records)
    bad += [{"image_id": image_id, "source": f"{source}:{line}", "reason": "duplicate_image_id", "detail": detail}
            for line, image_id, detail in dropped]
    records = records[~records["line"].isin({line for line, _, _ in dropped})].reset_index(drop=True)
    records["age"] = records["age"].astype("float32")
    return records, pd.DataFrame(bad, columns=REJECT_COLUMNS)
