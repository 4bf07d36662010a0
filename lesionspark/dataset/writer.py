"""The Petastorm dataset an ingest writes (driver side, Spark jobs): the decoded-rows and located-rows
schemas, and ``write_dataset``: decode tasks that write their own parts (``parts``), then splits,
rejects, counts and the manifest under ``datasets/<name>/``, replaced whole. Shared by ``ingest``
(image folders) and ``hmnist`` (pixel CSVs); ``balance`` publishes its parts the same way.
"""
from __future__ import annotations

import hashlib
import logging
import time
from typing import Iterator

import numpy as np
import pandas as pd

from .. import __version__
from ..store import storage
from ..store.layout import Layout
from ..store import parquet
from ..store import publishing
from ..core.classes import CLASSES
from ..core.config import Config, ConfigError
from .metadata import REJECT_COLUMNS
from ..store.parts import publish, scratch, writing
from ..core.progress import timed
from .schema import FIELD_NAMES, lesion_schema, record_struct
from .split import SPLITS, check_fractions

log = logging.getLogger(__name__)



class IngestError(RuntimeError):
    """An ingest that cannot run or whose accounting does not add up (nothing is replaced)."""


def require_manifest(layout: Layout, name: str) -> dict:
    """The manifest of the ingested dataset ``name``, or a ConfigError saying to run ingest."""
    if not storage.exists(layout.manifest(name)):
        raise ConfigError(f"no ingested dataset {name!r} under {layout.root}: run `lesionspark ingest` first")
    return storage.read_json(layout.manifest(name))


def decoded_schema():
    """What a decode function yields: a lesion record (every field nullable: a reject has no image),
    its split, and a reject reason and detail (``parts.writing`` writes the records, keeps the rest)."""
    from pyspark.sql.types import StringType
    return record_struct({"split": StringType(), "reason": StringType(), "detail": StringType()})


LOCATED_FIELDS = ["image_id", "dx", "split", "sha256", "source", "reason", "detail"]
SUMMARY_COLUMNS = ["image_id", "dx", "split", "source", "reason", "detail", "part", "n", "last", "digest"]


def located_schema():
    """What a decode task returns once it has written its records, no image bytes and no row per
    record: a row per rejected input (its reject fields, ``n`` 1), and a row per (split, dx, part)
    it wrote to: records ``n``, the part's last row group and the digest of those records (a
    decimal string: a sum of 48-bit numbers)."""
    from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType
    types = {"n": LongType(), "last": IntegerType()}
    return StructType([StructField(c, types.get(c, StringType()), True) for c in SUMMARY_COLUMNS])


def row_digests(image_id, sha256, split) -> int:
    """The sum over records of the first 48 bits of sha256("image_id|sha256|split"): independent
    of the order and the tasks the records were written in."""
    return sum(int(hashlib.sha256(f"{i}|{h}|{s}".encode()).hexdigest()[:12], 16)
               for i, h, s in zip(image_id, sha256, split))


def summarize(located: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``located`` (a row per input: ``LOCATED_FIELDS``, part, row_group) as ``located_schema``
    rows: the rejects as they come, then one row per (split, dx, part)."""
    groups: dict[tuple, tuple[int, int, int]] = {}
    for batch in located:
        ok = batch["reason"].isna().to_numpy()
        if not ok.all():
            rejects = batch.loc[~ok, LOCATED_FIELDS[:3] + ["source", "reason", "detail"]].copy()
            rejects["n"] = 1
            yield rejects.reindex(columns=SUMMARY_COLUMNS)
        for key, g in batch[ok].groupby(["split", "dx", "part"]):
            n, last, digest = groups.get(key, (0, -1, 0))
            groups[key] = (n + len(g), max(last, int(g["row_group"].max())),
                           digest + row_digests(g["image_id"], g["sha256"], g["split"]))
    yield pd.DataFrame([{"split": s, "dx": dx, "part": part, "n": n, "last": last, "digest": str(digest)}
                        for (s, dx, part), (n, last, digest) in groups.items()]).reindex(columns=SUMMARY_COLUMNS)


def writing_decoder(make, parts_uri: str, size: int, cfg: Config):
    """``make`` (a decode function yielding ``decoded_schema`` batches) as a ``mapInPandas``
    function that writes the records into Petastorm parts under ``parts_uri`` and yields
    ``located_schema`` rows."""
    write = writing(make, parts_uri, lesion_schema(size), int(cfg.get("ingest.rowgroup_size_mb")),
                    int(cfg.get("ingest.rows_per_file")), LOCATED_FIELDS)
    return lambda batches: summarize(write(batches))


def _decode_once(located, what: str, spark):
    """Run the decode tasks once (they write the records' parts) and bring their summary rows to the
    driver (a job's result holds only successful task attempts' rows, so they name exactly the parts
    to publish). (the ``Located`` summary, the decode rejects as pandas, seconds)."""
    with timed(log, what, spark=spark) as step:
        rows = located.toPandas()
        step.count = int(rows["n"].sum())
    rejects = rows[rows["reason"].notna()]
    return Located(rows[rows["reason"].isna()].to_dict("records"), len(rejects)), rejects, step.seconds


class Located:
    """What the decode tasks reported, summed per (split, dx, part): records written per split and
    class, row groups per part, and the order-independent digest of what was written."""

    def __init__(self, groups: list[dict], n_rejected: int = 0):
        self.rows = sum(int(r["n"]) for r in groups) + n_rejected
        self.written = {s: {dx: 0 for dx in CLASSES} for s in SPLITS}
        self.row_groups = {s: {} for s in SPLITS}
        for r in groups:
            self.written[r["split"]][r["dx"]] += int(r["n"])
            parts = self.row_groups[r["split"]]
            parts[r["part"]] = max(parts.get(r["part"], 0), int(r["last"]) + 1)
        self.digest = (sum(int(r["digest"]) for r in groups), sum(int(r["n"]) for r in groups))


def _write_rejects(rejects: list, run_id: str, out: str) -> dict:
    """Every reject row (``rejects``: Spark or pandas DataFrames of ``REJECT_COLUMNS``) in one
    Parquet file under ``out``, written with pyarrow through the root's filesystem, as the parts
    are: no Spark writer, so an object-store root needs no s3a connector for ingest. Spark's rows
    come to the driver a partition at a time (``local_frames``). {reason: count} as read back."""
    import pyarrow as pa
    from ..store.spark import local_frames
    at = pd.Timestamp.now(tz="UTC").floor("us")  # microseconds: what Spark reads as a timestamp
    schema = pa.schema([*((c, pa.string()) for c in REJECT_COLUMNS), ("run_id", pa.string()),
                        ("at", pa.timestamp("us", tz="UTC"))])

    def frames():
        for r in rejects:
            for frame in [r] if isinstance(r, pd.DataFrame) else local_frames(r.select(*REJECT_COLUMNS)):
                yield frame[REJECT_COLUMNS].astype(object).assign(run_id=run_id, at=at)
    parquet.write_parquet(f"{out}/part-00000.parquet", frames(), schema)
    return parquet.value_counts(out, "reason")


def _manifest(cfg: Config, run_id: str, inputs: dict, written: dict, rej_counts: dict, records: pd.DataFrame,
              decode: tuple[int, float], fingerprint: str, extra: dict | None) -> dict:
    n_decoded, decode_seconds = decode
    return {
        "dataset": cfg.get("dataset.name"), "run_id": run_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "format": "petastorm", "image_size": int(cfg.get("dataset.image_size")), "resize": cfg.get("dataset.resize"),
        "channels": 3, "classes": list(CLASSES), "fields": list(FIELD_NAMES),
        "inputs": inputs,
        "counts": {"written": sum(sum(v.values()) for v in written.values()), "rejected": sum(rej_counts.values()),
                   "by_split": {s: {"total": sum(written[s].values()), "per_class": written[s]} for s in SPLITS},
                   "lesions_by_split": records.groupby("split")["lesion_id"].nunique().to_dict(),
                   "rejected_by_reason": rej_counts},
        "split": {"fractions": check_fractions(cfg.get("ingest.split")), "seed": int(cfg.get("ingest.split.seed")),
                  "grouped_by": "lesion_id", "stratified_by": "dx"},
        "parameters": {"max_file_bytes": int(cfg.get("ingest.max_file_bytes")),
                       "max_image_pixels": int(cfg.get("limits.max_image_pixels")),
                       "rowgroup_size_mb": int(cfg.get("ingest.rowgroup_size_mb")), "codec": "png"},
        "timing": {"decode_seconds": round(decode_seconds, 2),
                   "decode_images_per_s": round(n_decoded / max(decode_seconds, 1e-9), 1)},
        "fingerprint": fingerprint,
        "versions": _versions(),
        **(extra or {}),
    }


def write_dataset(spark, cfg: Config, run_id: str, decode, rejects: list, records: pd.DataFrame,
                  inputs: dict, source_digest: str, what: str, extra: dict | None = None) -> dict:
    """Write splits, rejects and manifest under a staging directory and swap it in, but only when
    ``written + rejected == inputs['total']``.

    ``decode(parts_uri)`` gives the decode tasks as a DataFrame of ``located_schema`` rows (not yet
    computed; ``writing_decoder`` makes one): they run exactly once, each writing its records into
    Petastorm parts under ``parts_uri`` and returning its rejects and a row per part it wrote to.
    The splits are then published from those rows, and counts and fingerprint summed from them,
    with no pass over the images."""

    name = cfg.get("dataset.name")
    size = int(cfg.get("dataset.image_size"))
    layout = Layout(cfg.get("storage.root"))
    with publishing.AtomicDir(layout.dataset(name), run_id) as staging, scratch(staging, SPLITS) as parts_uri:
        summary, decode_rejects, decode_seconds = _decode_once(decode(parts_uri), what, spark)
        written = summary.written
        with timed(log, "publish petastorm splits", "records", spark) as step:
            publish(parts_uri, staging, lesion_schema(size), summary.row_groups)
            for s in SPLITS:
                log.info("  %-5s %6d records %s", s, sum(written[s].values()),
                         {k: v for k, v in written[s].items() if v})
            step.count = n_written = sum(sum(v.values()) for v in written.values())
        rej_counts = _write_rejects([*rejects, decode_rejects], run_id, f"{staging}/rejects")
        n_rejected = sum(rej_counts.values())
        log.info("ingest %s: %d inputs -> %d written + %d rejected", name, inputs["total"], n_written, n_rejected)
        for reason, n in sorted(rej_counts.items(), key=lambda kv: -kv[1]):
            log.info("  rejected %-22s %6d", reason, n)
        if n_written + n_rejected != inputs["total"]:
            raise IngestError(f"accounting failed: {n_written} written + {n_rejected} rejected != "
                              f"{inputs['total']} inputs; the previous dataset was left in place")
        manifest = _manifest(cfg, run_id, inputs, written, rej_counts, records, (summary.rows, decode_seconds),
                             _fingerprint(source_digest, summary.digest, cfg), extra)
        storage.write_json(f"{staging}/manifest.json", manifest)
    return manifest


def _fingerprint(source_digest: str, digest: tuple[int, int], cfg: Config) -> str:
    """Order-independent digest of what was written: metadata bytes, every written image's
    (image_id, sha256, split) summed as numbers (``digest``: sum, count) and the parameters that
    shape the records."""
    h = hashlib.sha256()
    params = [cfg.get("dataset.image_size"), cfg.get("dataset.resize"), cfg.get("ingest.split")]
    for part in (source_digest, str(digest[0]), str(digest[1]), repr(params)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _versions() -> dict:
    import petastorm
    import pyarrow
    import pyspark
    return {"lesionspark": __version__, "pyspark": pyspark.__version__, "pyarrow": pyarrow.__version__,
            "petastorm": petastorm.__version__, "numpy": np.__version__}
