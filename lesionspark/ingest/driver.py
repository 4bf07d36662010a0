"""Ingest (driver side): HAM10000 layout (metadata CSV + image folders) or hmnist pixel CSV -> Petastorm splits.

Driver side: read and validate the metadata (small), assign lesion-grouped splits, plan the joins.
Executors: list files, read bytes, decode/resize/encode (``decode_partition``) and write the
records into Petastorm parts themselves (``parts``): no image byte passes through the JVM.
Every input ends up written or in ``rejects`` with a reason; the job checks
``written + rejected == inputs`` before it swaps the new dataset in.
"""
from __future__ import annotations

import hashlib
import logging
import time

import pandas as pd

from ..store import storage

from ..store.layout import Layout
from ..core.config import Config
from ..dataset.writer import IngestError, located_schema, write_dataset, writing_decoder
from .executor import decode_partition
from .hmnist import ingest_hmnist
from ..store.listing import Reader, list_files
from ..dataset.metadata import REJECT_SCHEMA, parse_metadata
from ..core.progress import PhaseClock, timed
from ..store.spark import sql_conf, task_count
from ..dataset.split import assign_splits, check_fractions

log = logging.getLogger(__name__)

META_FIELDS = ["image_id", "lesion_id", "dx", "label", "malignant", "dx_type", "age", "sex",
               "localization", "split"]



METADATA_MAX_BYTES = 1 << 30


def _read_text(uri: str) -> str:
    """The metadata file's text, read on the driver through the storage layer (no Spark job): a
    regular file of at most 1 GiB, else an IngestError naming what is there."""
    try:
        data = storage.read_regular(uri, METADATA_MAX_BYTES)
    except (OSError, ValueError) as exc:
        raise IngestError(f"metadata file {uri} cannot be read: {exc}") from None
    if not data.strip():
        raise IngestError(f"metadata file {uri} is empty")
    return data.decode("utf-8-sig", errors="replace")


def _inputs(cfg: Config) -> tuple[str, list[str]]:
    """(metadata URI, image folder URIs), normalised; an IngestError when either is missing."""
    meta_uri = cfg.get("ingest.metadata")
    image_uris = cfg.get("ingest.images") or []
    if isinstance(image_uris, str):
        image_uris = [u for u in image_uris.split(",") if u]
    if not meta_uri or not image_uris:
        raise IngestError("ingest needs ingest.metadata (the metadata CSV) and ingest.images "
                          "(one or more image folders), or ingest.hmnist (a pixel CSV)")
    return storage.normalize_uri(meta_uri), [storage.normalize_uri(u) for u in image_uris]


def _metadata(spark, cfg: Config, meta_uri: str):
    """The metadata parsed and validated on the driver (about 100 bytes a row), with splits:
    (text, records, rejected rows, the records as a DataFrame, every image id the file names with
    ``valid``: whether a record has it)."""
    from pyspark.sql import functions as F
    with timed(log, "metadata", "rows", spark) as step:
        text = _read_text(meta_uri)
        records, meta_rejects = parse_metadata(text, meta_uri)
        step.count = len(records) + len(meta_rejects)
    if records.empty:
        raise IngestError(f"{meta_uri}: no usable metadata rows ({len(meta_rejects)} rejected)")
    records["split"] = assign_splits(records, check_fractions(cfg.get("ingest.split")), int(cfg.get("ingest.split.seed")))
    meta = spark.createDataFrame(records[META_FIELDS].astype({"age": "float64"}))
    meta = meta.withColumn("label", F.col("label").cast("int")) \
               .withColumn("malignant", F.col("malignant").cast("byte")) \
               .withColumn("age", F.col("age").cast("float"))
    ids = pd.concat([records["image_id"], meta_rejects["image_id"]]).dropna().unique()
    known_ids = spark.createDataFrame(pd.DataFrame({"image_id": ids, "valid": pd.Series(ids).isin(records["image_id"])}))
    return text, records, meta_rejects, meta, known_ids


def _listing(spark, cfg: Config, image_uris: list[str], known_ids):
    """The image folders listed in executors (no file contents read), full-outer-joined to the
    metadata's image ids and persisted: files match rows by name without extension; the first path
    (sorted) of an image id is its file (``chosen_path``), other copies are duplicates; an id with no
    file has a null ``path``. Returns (listing, files, non-chosen copies, chosen files without a
    metadata row)."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    with timed(log, "listing", "files", spark) as step:
        by_id = Window.partitionBy("image_id").orderBy("path")
        listing = list_files(spark, image_uris, cfg.get("ingest.image_glob"),
                             follow_links=bool(cfg.get("ingest.follow_links"))) \
            .withColumnRenamed("stem", "image_id").select("path", "length", "image_id") \
            .withColumn("copy", F.row_number().over(by_id)) \
            .withColumn("chosen_path", F.first("path").over(by_id)) \
            .join(known_ids.withColumn("known", F.lit(True)), "image_id", "full_outer") \
            .withColumn("known", F.coalesce("known", F.lit(False))) \
            .persist(StorageLevel.MEMORY_AND_DISK)
        n_files, non_chosen, orphan_chosen = listing.agg(
            F.count("path"), F.sum((F.col("copy") > 1).cast("int")),
            F.sum(((F.col("copy") == 1) & ~F.col("known")).cast("int"))).collect()[0]
        step.count = n_files
    return listing, n_files, non_chosen or 0, orphan_chosen or 0


def _listing_rejects(spark, meta_rejects: pd.DataFrame, listing, meta_uri: str) -> list:
    """Reject rows of the metadata and the listing: bad rows, files without a row, duplicate files,
    rows without a file."""
    from pyspark.sql import functions as F
    rejects = [spark.createDataFrame(meta_rejects, REJECT_SCHEMA)]
    rejects.append(listing.filter(~F.col("known")).select(
        "image_id", F.col("path").alias("source"), F.lit("no_metadata_row").alias("reason"),
        F.lit("no row of the metadata file names this image").alias("detail")))
    rejects.append(listing.filter((F.col("copy") > 1) & F.col("known")).select(
        "image_id", F.col("path").alias("source"), F.lit("duplicate_image_file").alias("reason"),
        F.concat(F.lit("another file has this image id and was used: "), F.col("chosen_path")).alias("detail")))
    rejects.append(listing.filter(F.col("path").isNull() & F.col("valid")).select(
        "image_id", F.lit(meta_uri).alias("source"), F.lit("image_missing").alias("reason"),
        F.lit("no image file named <image_id>.<ext> in the image folders").alias("detail")))
    return rejects


def ingest(spark, cfg: Config, run_id: str | None = None) -> dict:
    """Run the ingest stage; returns the manifest (also written beside the dataset)."""
    if cfg.get("ingest.hmnist"):
        return ingest_hmnist(spark, cfg, run_id)
    from pyspark.sql import functions as F

    t_start = time.perf_counter()
    run_id = run_id or storage.new_run_id()
    name, size, mode = cfg.get("dataset.name"), int(cfg.get("dataset.image_size")), cfg.get("dataset.resize")
    meta_uri, image_uris = _inputs(cfg)
    layout = Layout(cfg.get("storage.root"))
    log.info("ingest %s: metadata %s, images %s -> %s (run %s, %dpx %s)", name, meta_uri,
             ", ".join(image_uris), layout.dataset(name), run_id, size, mode)
    text, records, meta_rejects, meta, known_ids = _metadata(spark, cfg, meta_uri)
    listing, n_files, non_chosen, orphan_chosen = _listing(spark, cfg, image_uris, known_ids)
    rejects = _listing_rejects(spark, meta_rejects, listing, meta_uri)

    # Read, hash, decode, resize, encode in executors: each chosen file once, in its row's task.
    to_read = listing.filter((F.col("copy") == 1) & F.col("known")).select("path", "length", "image_id") \
        .join(F.broadcast(meta), "image_id")
    n_chosen = n_files - non_chosen - orphan_chosen
    tasks = task_count(spark, n_chosen, int(cfg.get("ingest.files_per_task")))
    clock = PhaseClock(spark, ("files", "read_decode_encode"))
    reader = Reader(image_uris, bool(cfg.get("ingest.follow_links")), float(cfg.get("ingest.read_timeout_s")))
    make = decode_partition(size, mode, int(cfg.get("limits.max_image_pixels")), reader,
                             int(cfg.get("ingest.max_file_bytes")), clock, int(cfg.get("limits.max_decoded_bytes")))
    # Hashed by image id and sorted in each task: the same inputs give the same parts, row for row.
    to_read = to_read.repartition(tasks, "image_id").sortWithinPartitions("image_id")

    def decode(parts_uri: str):
        return to_read.mapInPandas(writing_decoder(make, parts_uri, size, cfg), located_schema())
    n_rows = len(records) + len(meta_rejects)
    inputs = {"metadata": meta_uri, "images": image_uris, "metadata_rows": n_rows, "image_files": n_files,
              "total": n_rows + non_chosen + orphan_chosen}
    with sql_conf(spark, spark_sql_execution_arrow_maxRecordsPerBatch=int(cfg.get("ingest.arrow_batch_rows"))):
        manifest = write_dataset(spark, cfg, run_id, decode, rejects, records, inputs,
                                 hashlib.sha256(text.encode()).hexdigest(), f"read + decode + resize to {size}px",
                                 extra={"lesion_grouped": True})
    log.info("ingest: inside Python workers (seconds summed over tasks): %s", clock.summary())
    listing.unpersist()
    log.info("ingest %s: done in %.1fs -> %s", name, time.perf_counter() - t_start, layout.dataset(name))
    return manifest
