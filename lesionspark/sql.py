"""Spark SQL over the storage root: every table registered by name, no set-up beyond the root."""
from __future__ import annotations

import logging

from . import storage

log = logging.getLogger(__name__)

TABLES = ("predictions", "score_rejects", "score_files", "score_runs", "metrics")


def register(spark, root: str, metastore: bool = False) -> list[str]:
    """Register the tables under ``root`` as temporary views (or, with ``metastore``, as external
    tables in the session's catalog, e.g. a Hive metastore). Returns the names registered."""
    import pyarrow.fs as pafs
    root = storage.normalize_uri(root)
    names = []
    for name in TABLES:
        uri = storage.join(root, "tables", name)
        if not storage.exists(uri):
            continue
        if metastore:
            spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING parquet LOCATION '{uri}'")
            if name in ("predictions", "score_rejects", "score_files", "score_runs"):
                spark.sql(f"MSCK REPAIR TABLE {name}")  # pick up partitions committed since
        else:
            # Columns added over versions (predictions.review_flag) are read from every file.
            spark.read.option("mergeSchema", "true").parquet(uri).createOrReplaceTempView(name)
        names.append(name)
    # Ingest rejects of every dataset, with the dataset's name.
    fs, base = storage.filesystem(storage.join(root, "datasets"))
    if fs.get_file_info(base).type == pafs.FileType.Directory:
        from pyspark.sql import functions as F
        frames = []
        for info in fs.get_file_info(pafs.FileSelector(base)):
            if info.type == pafs.FileType.Directory and not info.base_name.startswith("."):
                uri = storage.join(root, "datasets", info.base_name, "rejects")
                if storage.exists(uri):
                    frames.append(spark.read.parquet(uri).withColumn("dataset", F.lit(info.base_name)))
        if frames:
            df = frames[0]
            for f in frames[1:]:
                df = df.unionByName(f)
            df.createOrReplaceTempView("ingest_rejects")
            names.append("ingest_rejects")
    if "predictions" in names and "score_files" in names:
        # Every path of a content (the same image under two paths is scored once).
        paths = spark.table("score_files").select(spark.table("score_files")["path_key"].alias("image_path"),
                                                  "image_sha256").distinct()
        spark.table("predictions").drop("image_path").join(paths, "image_sha256") \
            .createOrReplaceTempView("predictions_by_path")
        names.append("predictions_by_path")
    return names


def run_query(spark, root: str, query: str, out: str | None = None, metastore: bool = False, limit: int = 50):
    names = register(spark, root, metastore)
    log.info("sql: tables %s", ", ".join(names) or "(none yet)")
    df = spark.sql(query)
    if out:
        if out.endswith(".csv"):
            df.coalesce(1).write.mode("overwrite").option("header", True).csv(out)
        else:
            df.write.mode("overwrite").parquet(out)
        return {"written": out, "rows": spark.read.parquet(out).count() if not out.endswith(".csv")
                else spark.read.option("header", True).csv(out).count()}
    rows = df.limit(limit).toPandas()
    return rows
