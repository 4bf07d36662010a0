"""Explain: heatmap overlays for a model version over a dataset split or an image folder.

``explanations/<model>/<version>/<source>/`` holds ``overlays/<image>.png`` (the image with the
heatmap of its predicted class) and ``table/`` (Parquet: image, source path, true class where
known, predicted class, calibrated confidence, overlay path, ``explanation_empty``, or a reject
reason). ``<source>`` is ``split-<name>`` or ``folder-<name>``. A rerun for the same source replaces
that folder whole (``publishing.AtomicDir``). The driver (``explain``) picks the source and writes the
table; ``executor.explain_partition`` runs in executors: it decodes, predicts and draws each image through
``overlays``. Nothing per image comes to the driver.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time

import pandas as pd

from ..core import pathkey
from ..store import storage
from ..store.layout import Layout
from ..store import parquet
from ..store import publishing
from ..core.config import Config, ConfigError
from ..dataset.clinical import card_fields, drop_shared, load_sidecar
from ..inference.spec import build as build_spec
from .executor import explain_partition
from ..core.progress import timed
from ..store.registry import explanations_dir, resolve_model
from ..dataset.splitread import read_split

log = logging.getLogger(__name__)


def table_schema():
    from pyspark.sql.types import BooleanType, DoubleType, StringType, StructField, StructType
    return StructType([StructField(n, t) for n, t in (
        ("image", StringType()), ("source_path", StringType()), ("true_dx", StringType()),
        ("predicted_dx", StringType()), ("confidence", DoubleType()), ("overlay_path", StringType()),
        ("explanation_empty", BooleanType()), ("reason", StringType()), ("detail", StringType()))])


def _write_table(table: pd.DataFrame, uri: str) -> None:
    """The explanation table (a row per image: a few hundred bytes, no pixels; at most
    ``explain.limit`` rows) as one Parquet file under ``uri``, written with pyarrow through the
    root's filesystem: no Spark writer, so an object-store root needs no s3a connector."""
    from pyspark.sql.pandas.types import to_arrow_schema
    parquet.write_parquet(f"{uri}/part-00000.parquet", [table], to_arrow_schema(table_schema()))



def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def _sources(spark, cfg: Config, card: dict, root: str):
    """(source name, rows DataFrame, reader or None) for ``explain.images`` or ``explain.split``."""
    from pyspark.sql import functions as F
    limit = int(cfg.get("explain.limit"))
    folder = cfg.get("explain.images")
    if folder:
        from ..store.listing import Reader, list_files
        folder = storage.normalize_uri(folder)
        if not storage.exists(folder):
            raise ConfigError(f"explain.images: {folder} does not exist")
        follow = bool(cfg.get("archive.follow_links"))
        files = list_files(spark, [folder], regex=cfg.get("archive.path_regex"), follow_links=follow)
        secret = pathkey.salt(cfg)
        stored = pathkey.column(spark, secret)  # score.hash_paths: neither the path nor the name is stored
        key = F.udf(lambda p: f"{_safe(p.rsplit('/', 1)[-1].rsplit('.', 1)[0])}-"
                              f"{hashlib.sha1(p.encode()).hexdigest()[:8]}", "string")
        image = F.concat(F.lit("img-"), F.substring(stored, 1, 16)) if secret else key("path")
        rows = files.select(image.alias("image"), stored.alias("source_path"), F.col("path").alias("read_path"),
                            F.lit(None).cast("string").alias("true_dx"), "length")
        base = folder.rstrip("/").rsplit("/", 1)[-1]
        name = f"folder-{pathkey.digest(secret, folder)[:16] if secret else _safe(base)}"
        reader = Reader([folder], follow, float(cfg.get("archive.read_timeout_s")))
    else:
        layout = Layout(root)
        dataset = cfg.get("evaluate.dataset") or card.get("dataset") or cfg.get("dataset.name")
        split = cfg.get("explain.split")
        url = layout.split(dataset, split)
        if not storage.exists(url):
            raise ConfigError(f"explain: dataset {dataset!r} has no split {split!r}")
        rows = read_split(spark, url, ["image_id", "dx", "image", *card_fields(card)]).select(
            F.col("image_id").alias("image"), F.col("image_id").alias("source_path"), F.col("dx").alias("true_dx"),
            F.col("image").alias("content"), *card_fields(card))
        name, reader = f"split-{_safe(split)}", None
    rows = rows.orderBy("image")
    return name, (rows.limit(limit) if limit > 0 else rows), reader


def _sidecar(spark, cfg: Config, card: dict, rows, reader):
    """``archive.metadata_csv`` for a model with a metadata input, without the image ids that name
    more than one of the listed files (``clinical.drop_shared``)."""
    sidecar = load_sidecar(cfg.get("archive.metadata_csv"), card_fields(card))
    return drop_shared(spark, rows, sidecar, "read_path") if reader is not None else sidecar


def explain(spark, cfg: Config, run_id: str | None = None) -> dict:
    """Grad-CAM overlays and their table for ``explain.model`` over ``explain.images`` (a folder) or
    ``explain.split`` of the model's dataset; at most ``explain.limit`` images (0: all)."""
    from ..store.spark import sql_conf
    start = time.perf_counter()
    root = storage.normalize_uri(cfg.get("storage.root"))
    card, model_uri = resolve_model(root, cfg.get("explain.model"))
    name, rows, reader = _sources(spark, cfg, card, root)
    final = f"{explanations_dir(root, card)}/{name}"
    n = rows.count()
    if not n:
        raise ConfigError(f"explain: no images in {name}")
    tasks = max(1, min(spark.sparkContext.defaultParallelism * 4, -(-n // 64)))
    publish = publishing.AtomicDir(final, run_id)
    with publish as staging:  # the table names each overlay where readers will find it
        fn = explain_partition(build_spec(cfg, card, model_uri), f"{staging}/overlays",
                               f"{publish.published}/overlays", reader, _sidecar(spark, cfg, card, rows, reader))
        with sql_conf(spark, spark_sql_execution_arrow_maxRecordsPerBatch=int(cfg.get("inference.arrow_batch_rows"))), \
                timed(log, f"explain {n} images of {name}", spark=spark) as step:
            table = rows.repartition(tasks).mapInPandas(fn, table_schema()).toPandas()
            step.count = n
        _write_table(table, f"{staging}/table")
    by_class = {str(k): int(v) for k, v in table["predicted_dx"].dropna().value_counts().items()}
    rejected = int(table["predicted_dx"].isna().sum())
    blank = int((table["explanation_empty"] == True).sum())  # noqa: E712 (None for a reject)
    explained = sum(by_class.values())  # more than the files where a DICOM object holds several frames
    summary = {"model": card["name"], "model_version": card["version"], "source": name, "images": n,
               "method": cfg.get("inference.heatmap"), "explained": explained, "rejected": rejected,
               "empty": blank, "predicted_by_class": by_class,
               "table": f"{publish.published}/table", "overlays": f"{publish.published}/overlays",
               "seconds": round(time.perf_counter() - start, 1)}
    log.info("explain (%s): %d files of %s: %d overlays, %d with no positive evidence, %d rejected, under %s",
             cfg.get("inference.heatmap"), n, name, explained - blank, blank, rejected, publish.published)
    return summary
