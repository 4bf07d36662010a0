"""The Petastorm dataset an ingest writes (driver side, Spark jobs): the decoded-rows and located-rows
schemas, and ``write_dataset``: decode tasks that write their own parts (``parts``), then splits,
rejects, counts and the manifest under ``datasets/<name>/``, replaced whole. Shared by ``ingest``
(image folders) and ``hmnist`` (pixel CSVs); ``balance`` publishes its parts the same way.
"""
from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pandas as pd

from . import __version__, storage
from .classes import CLASSES
from .config import Config, ConfigError
from .metadata import REJECT_COLUMNS
from .parts import publish, scratch, writing
from .progress import timed
from .schema import FIELD_NAMES, lesion_schema, record_struct
from .split import SPLITS, check_fractions

log = logging.getLogger(__name__)



class IngestError(RuntimeError):
    """An ingest that cannot run or whose accounting does not add up (nothing is replaced)."""


def require_manifest(layout: storage.Layout, name: str) -> dict:
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


def located_schema():
    """What a decode task returns once it has written its records: per input, the fields that
    accounting, rejects and the fingerprint need, and the part and row group it went to (null for
    a reject). No image bytes."""
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType
    types = {f.name: f.dataType for f in decoded_schema().fields}
    return StructType([StructField(n, types[n], True) for n in LOCATED_FIELDS]
                      + [StructField("part", StringType(), True), StructField("row_group", IntegerType(), True)])


def writing_decoder(make, parts_uri: str, size: int, cfg: Config):
    """``make`` (a decode function yielding ``decoded_schema`` batches) as a ``mapInPandas``
    function that writes the records into Petastorm parts under ``parts_uri`` and yields
    ``located_schema`` rows."""
    return writing(make, parts_uri, lesion_schema(size), int(cfg.get("ingest.rowgroup_size_mb")),
                   int(cfg.get("ingest.rows_per_file")), LOCATED_FIELDS)


def _decode_once(spark, located, raw: str, what: str):
    """Run the decode tasks once (they write the records' parts); their small rows go to Parquet at
    ``raw`` through Spark's commit protocol, and one aggregate over them gives everything the driver
    needs. (those rows as a DataFrame, the ``Located`` summary, seconds)."""
    from pyspark.sql import functions as F
    row_hash = F.sha2(F.concat_ws("|", "image_id", "sha256", "split"), 256)
    with timed(log, what, spark=spark) as step:
        located.write.parquet(raw)
        located = spark.read.parquet(raw)
        groups = located.groupBy("split", "dx", "reason", "part").agg(
            F.count("*").alias("n"), F.max("row_group").alias("last"),
            F.sum(F.conv(F.substring(row_hash, 1, 12), 16, 10).cast("decimal(38,0)")).alias("digest")).collect()
        step.count = sum(r["n"] for r in groups)
    return located, Located(groups), step.seconds


class Located:
    """What the decode tasks reported, summed per (split, dx, reason, part): records written per
    split and class, row groups per part, and the order-independent digest of what was written."""

    def __init__(self, groups):
        ok = [r for r in groups if r["reason"] is None]
        self.rows = sum(r["n"] for r in groups)
        self.written = {s: {dx: 0 for dx in CLASSES} for s in SPLITS}
        self.row_groups = {s: {} for s in SPLITS}
        for r in ok:
            self.written[r["split"]][r["dx"]] += r["n"]
            parts = self.row_groups[r["split"]]
            parts[r["part"]] = max(parts.get(r["part"], 0), r["last"] + 1)
        self.digest = (sum(int(r["digest"]) for r in ok), sum(r["n"] for r in ok))


def _write_rejects(spark, rejects: list, run_id: str, out: str) -> dict:
    """Every reject row in one Parquet table at ``out``; {reason: count} as read back."""
    from pyspark.sql import functions as F
    all_rejects = rejects[0]
    for r in rejects[1:]:
        all_rejects = all_rejects.unionByName(r)
    all_rejects = all_rejects.withColumn("run_id", F.lit(run_id)).withColumn("at", F.current_timestamp())
    all_rejects.coalesce(1).write.mode("overwrite").parquet(out)
    return {r["reason"]: r["count"] for r in spark.read.parquet(out).groupBy("reason").count().collect()}


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
                       "max_image_pixels": int(cfg.get("ingest.max_image_pixels")),
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
    Petastorm parts under ``parts_uri`` and returning a small row per input. The splits are then
    published from those rows; rejects, counts and fingerprint are read from them, with no Python
    and no pass over the images."""
    from pyspark.sql import functions as F

    name = cfg.get("dataset.name")
    size = int(cfg.get("dataset.image_size"))
    layout = storage.Layout(cfg.get("storage.root"))
    with storage.AtomicDir(layout.dataset(name), run_id) as staging, scratch(staging, SPLITS) as parts_uri:
        raw = f"{parts_uri}/_located"
        located, summary, decode_seconds = _decode_once(spark, decode(parts_uri), raw, what)
        written = summary.written
        with timed(log, "publish petastorm splits", "records", spark) as step:
            publish(parts_uri, staging, lesion_schema(size), summary.row_groups)
            for s in SPLITS:
                log.info("  %-5s %6d records %s", s, sum(written[s].values()),
                         {k: v for k, v in written[s].items() if v})
            step.count = n_written = sum(sum(v.values()) for v in written.values())
        rejects = rejects + [located.filter(F.col("reason").isNotNull()).select(*REJECT_COLUMNS)]
        rej_counts = _write_rejects(spark, rejects, run_id, f"{staging}/rejects")
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
