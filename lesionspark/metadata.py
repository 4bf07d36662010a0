"""Parse and validate the HAM10000 metadata CSV (pure: text in, records and rejects out)."""
from __future__ import annotations

import csv
import io
import math

import pandas as pd

from .classes import CLASSES, LABEL_OF, binary_label

REQUIRED = ("lesion_id", "image_id", "dx")
OPTIONAL = ("dx_type", "age", "sex", "localization")
COLUMNS = REQUIRED + OPTIONAL
REJECT_COLUMNS = ["image_id", "source", "reason", "detail"]


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


def parse_metadata(text: str, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(records, rejects)``.

    ``records`` has one row per usable metadata row: the DESIGN.md fields plus ``label``,
    ``malignant`` and ``line``. ``rejects`` has ``image_id, source, reason, detail`` for every row
    that was not usable: malformed CSV rows, missing fields, unknown ``dx``, invalid ``age``,
    duplicated ``image_id`` (an identical repeat keeps the first row; conflicting repeats are all
    rejected). Every data row of the file ends up in exactly one of the two.
    """
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise MetadataError(f"{source}: the metadata file is empty") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise MetadataError(f"{source}: the header {header} lacks the required column(s) {missing}; "
                            f"expected {','.join(COLUMNS)}")
    index = {name: header.index(name) for name in COLUMNS if name in header}
    good, bad = [], []

    def reject(line: int, image_id: str | None, reason: str, detail: str) -> None:
        bad.append({"image_id": image_id, "source": f"{source}:{line}", "reason": reason,
                    "detail": detail})

    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line: not a record
        image_id = fields[index["image_id"]].strip() if len(fields) > index["image_id"] else None
        if len(fields) != len(header):
            reject(line, image_id or None, "malformed_csv_row",
                   f"expected {len(header)} fields, got {len(fields)}")
            continue
        row = {name: fields[i].strip() for name, i in index.items()}
        empty = [c for c in REQUIRED if not row[c]]
        if empty:
            reject(line, row["image_id"] or None, "missing_field", f"empty {', '.join(empty)}")
            continue
        dx = row["dx"].lower()
        if dx not in LABEL_OF:
            reject(line, row["image_id"], "unknown_dx", f"dx {row['dx']!r} is not one of {', '.join(CLASSES)}")
            continue
        try:
            age = _age(row.get("age", ""))
        except ValueError as exc:
            reject(line, row["image_id"], "invalid_age", str(exc))
            continue
        good.append({
            "image_id": row["image_id"], "lesion_id": row["lesion_id"], "dx": dx,
            "label": LABEL_OF[dx], "malignant": binary_label(dx),
            "dx_type": row.get("dx_type") or "unknown", "age": age,
            "sex": row.get("sex") or "unknown", "localization": row.get("localization") or "unknown",
            "line": line,
        })

    records = pd.DataFrame(good, columns=["image_id", "lesion_id", "dx", "label", "malignant", "dx_type",
                                          "age", "sex", "localization", "line"])
    # Duplicated image_id: identical repeats keep the first row, conflicting ones are all rejected.
    content = ["lesion_id", "dx", "dx_type", "age", "sex", "localization"]
    dup = records[records.duplicated("image_id", keep=False)]
    if len(dup):
        drop = set()
        for image_id, rows in dup.groupby("image_id", sort=False):
            distinct = rows[content].astype(str).drop_duplicates()
            if len(distinct) == 1:
                first = rows["line"].min()
                for line in rows["line"]:
                    if line != first:
                        reject(line, image_id, "duplicate_image_id", f"repeats line {first}")
                        drop.add(line)
            else:
                lines = ", ".join(map(str, rows["line"]))
                for line in rows["line"]:
                    reject(line, image_id, "duplicate_image_id",
                           f"conflicting rows for one image at lines {lines}")
                    drop.add(line)
        records = records[~records["line"].isin(drop)]
    records = records.reset_index(drop=True)
    records["age"] = records["age"].astype("float32")
    rejects = pd.DataFrame(bad, columns=REJECT_COLUMNS)
    return records, rejects
