"""Score (driver side): incremental, idempotent bulk scoring of an image archive.

A run lists the archive with Spark, hashes only files it has not seen (path, length and mtime
unchanged = seen; hashing runs in the JVM), scores each new image content once per model version
(the first path of a content; every path is recorded in ``score_files``), and commits its rows
by renaming its ``run_id=`` partition directories into the tables. A run killed at any point
leaves only ``tables/_staging/<run_id>/``, which Spark ignores and the next run removes, so a
rerun ends with exactly one prediction per (image_sha256, model, model_version).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time

from . import storage
from .classes import malignant_outputs
from .config import Config, ConfigError
from .listing import file_contents, list_files
from .progress import timed

log = logging.getLogger(__name__)

CARD_KEYS = ("name", "version", "architecture", "classes", "image_size", "resize", "preprocessing")
TABLES = ("predictions", "score_rejects", "score_files")


class ScoreError(ConfigError):
    """The run cannot start (model or archive missing, unreadable card): exit code 2."""


def resolve_model(root: str, spec: str) -> tuple[dict, str]:
    """``name[:version|latest]`` -> (model card, model file URI). Refuses an unreadable card."""
    name, _, version = spec.partition(":")
    base = storage.join(storage.normalize_uri(root), "models", name)
    if not version or version == "latest":
        if not storage.exists(base + "/latest"):
            raise ScoreError(f"no model {name!r} under {base} (train one, or check --root)")
        version = storage.read_bytes(base + "/latest").decode().strip()
    model_dir = f"{base}/{version}"
    try:
        card = storage.read_json(model_dir + "/model_card.json")
    except Exception as exc:
        raise ScoreError(f"cannot read the model card of {name}:{version} ({exc}); refusing to score") from None
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise ScoreError(f"the model card of {name}:{version} lacks {missing}; refusing to score")
    if not storage.exists(model_dir + "/model.keras"):
        raise ScoreError(f"{model_dir}/model.keras is missing")
    return card, model_dir + "/model.keras"


def path_key(salt: str | None):
    """How paths are stored: as they are, or (privacy) a salted SHA-256 of the path."""
    from pyspark.sql import functions as F
    if salt is None:
        return F.col("path")
    return F.sha2(F.concat(F.lit(salt), F.col("path")), 256)


def _table(layout_root: str, name: str) -> str:
    return storage.join(layout_root, "tables", name)


def _read_table(spark, uri: str, schema: str):
    if storage.exists(uri):
        return spark.read.parquet(uri)
    return spark.createDataFrame([], schema)


def score(spark, cfg: Config, run_id: str | None = None) -> dict:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from .predict import score_partition, score_schema

    t_start = time.perf_counter()
    run_id = run_id or storage.new_run_id()
    root = storage.normalize_uri(cfg.get("storage.root"))
    archive = cfg.get("score.archive", None)
    if not archive:
        raise ScoreError("score needs score.archive (--archive <uri>)")
    archive = storage.normalize_uri(archive)
    if not storage.exists(archive):
        raise ScoreError(f"archive {archive} does not exist")
    card, model_uri = resolve_model(root, cfg.get("score.model"))
    model, version = card["name"], card["version"]
    salt = cfg.get("score.path_salt", None) if cfg.get("score.hash_paths") else None
    if cfg.get("score.hash_paths") and not salt:
        raise ScoreError("score.hash_paths needs score.path_salt (keep it secret and the same across runs)")
    key = path_key(salt)
    tables = {t: _table(root, t) for t in TABLES}
    staging = storage.join(root, "tables", "_staging", run_id)
    _clean_staging(root, run_id)
    log.info("score %s:%s on %s (run %s)", model, version, archive, run_id)

    # 1. List (paths and sizes only) and find files not seen before.
    with timed(log, "listing", "files") as step:
        listing = list_files(spark, [archive], regex=cfg.get("score.path_regex")) \
            .withColumn("path_key", key).cache()
        listed = listing.count()
        step.count = listed
    index = _read_table(spark, tables["score_files"],
                        "path_key string, length long, modificationTime timestamp, image_sha256 string")
    index = index.select("path_key", "length", "modificationTime", "image_sha256").dropDuplicates(
        ["path_key", "length", "modificationTime"])
    seen = listing.join(index, ["path_key", "length", "modificationTime"], "inner")
    new = listing.join(index, ["path_key", "length", "modificationTime"], "left_anti")
    new_paths = [r.path for r in new.filter("length > 0").select("path").collect()]
    # 2. Hash new files in the JVM (no Python), reading only them.
    with timed(log, f"hash {len(new_paths)} new files", "files") as step:
        hashed = spark.createDataFrame([], "path string, image_sha256 string")
        if new_paths:
            hashed = file_contents(spark, new_paths).select("path", F.sha2("content", 256).alias("image_sha256"))
        empty_sha = hashlib.sha256(b"").hexdigest()
        new_hashed = new.join(hashed, "path", "left").withColumn(
            "image_sha256", F.coalesce("image_sha256", F.lit(empty_sha)))
        files = seen.select("path", "path_key", "length", "modificationTime", "image_sha256") \
            .unionByName(new_hashed.select("path", "path_key", "length", "modificationTime", "image_sha256")) \
            .persist(StorageLevel.MEMORY_AND_DISK)
        step.count = len(new_paths)

    # 3. What is already done for this model version: predicted or rejected.
    done = _read_table(spark, tables["predictions"], "image_sha256 string, model string, model_version string") \
        .filter((F.col("model") == model) & (F.col("model_version") == version)).select("image_sha256") \
        .unionByName(_read_table(spark, tables["score_rejects"], "image_sha256 string, model string, model_version string")
                     .filter((F.col("model") == model) & (F.col("model_version") == version)).select("image_sha256")) \
        .distinct()
    todo = files.join(done, "image_sha256", "left_anti")
    first = todo.groupBy("image_sha256").agg(F.min("path").alias("path"))
    max_bytes = int(cfg.get("score.max_file_bytes"))
    too_large = first.join(files.select("path", "length"), "path").filter(F.col("length") > max_bytes)
    empty = first.filter(F.col("image_sha256") == empty_sha)
    to_score = first.join(too_large.select("path"), "path", "left_anti").join(empty.select("path"), "path", "left_anti")
    score_paths = [r.path for r in to_score.select("path").collect()]

    # 4. Decode and predict in executors: the model is loaded once per Python worker.
    out_schema = score_schema()
    results = spark.createDataFrame([], out_schema)
    if score_paths:
        contents = file_contents(spark, score_paths).join(
            to_score.withColumnRenamed("image_sha256", "sha256"), "path").select("path", "sha256", "content")
        results = contents.mapInPandas(score_partition(model_uri, card, int(cfg.get("score.batch_size")),
                                                       int(cfg.get("ingest.max_image_pixels")),
                                                       int(cfg.get("score.threads"))), out_schema)
    results = results.persist(StorageLevel.MEMORY_AND_DISK)
    arrow_rows = int(cfg.get("score.arrow_batch_rows"))
    from .ingest import sql_conf
    with sql_conf(spark, spark_sql_execution_arrow_maxRecordsPerBatch=arrow_rows), \
            timed(log, f"decode + predict {len(score_paths)} images") as step:
        step.count = results.count()
    now = dt.datetime.now(dt.timezone.utc)
    classes = card["classes"]
    malignant_idx = malignant_outputs(classes)
    probs = F.col("probabilities")
    predicted_label = F.expr("array_position(probabilities, array_max(probabilities)) - 1").cast("int")
    preds = results.filter(F.col("reason").isNull()).join(
        files.select("path", "path_key").dropDuplicates(["path"]), "path").select(
        F.col("path_key").alias("image_path"), F.col("sha256").alias("image_sha256"),
        F.lit(model).alias("model"), F.lit(version).alias("model_version"),
        F.element_at(F.array(*[F.lit(c) for c in classes]), predicted_label + 1).alias("predicted_dx"),
        predicted_label.alias("predicted_label"), F.array_max(probs).alias("confidence"), probs.alias("probabilities"),
        sum((F.element_at(probs, i + 1) for i in malignant_idx), F.lit(0.0)).alias("malignant_probability"),
        F.lit(run_id).alias("run_id"), F.lit(now).cast("timestamp").alias("scored_at"),
        F.lit(now.date().isoformat()).alias("scored_date"))
    decode_rejects = results.filter(F.col("reason").isNotNull()).select(
        "path", F.col("sha256").alias("image_sha256"), "reason", "detail")
    listing_rejects = too_large.select("path", "image_sha256", F.lit("file_too_large").alias("reason"),
                                       F.concat(F.col("length").cast("string"), F.lit(f" bytes > score.max_file_bytes={max_bytes}")).alias("detail")) \
        .unionByName(empty.select("path", "image_sha256", F.lit("empty_file").alias("reason"),
                                  F.lit("the file has 0 bytes").alias("detail")))
    rejects = decode_rejects.unionByName(listing_rejects).join(
        files.select("path", "path_key").dropDuplicates(["path"]), "path").select(
        F.col("path_key").alias("image_path"), "image_sha256", F.lit(model).alias("model"),
        F.lit(version).alias("model_version"), "reason", "detail", F.lit(run_id).alias("run_id"),
        F.lit(now).cast("timestamp").alias("at"))
    index_rows = new_hashed.select("path_key", "length", "modificationTime", "image_sha256",
                                   F.lit(run_id).alias("run_id"))

    # 5. Write under staging, then commit by renaming the run's partition directories in.
    with timed(log, "write tables", "rows") as step:
        frames = {"predictions": preds, "score_rejects": rejects, "score_files": index_rows}
        counts = {t: df.count() for t, df in frames.items()}  # from persisted results: cheap
        preds.write.partitionBy("scored_date", "run_id").parquet(f"{staging}/predictions")
        rejects.write.partitionBy("run_id").parquet(f"{staging}/score_rejects")
        index_rows.write.partitionBy("run_id").parquet(f"{staging}/score_files")
        step.count = sum(counts.values())
    _commit(root, run_id)
    scored, rejected = counts["predictions"], counts["score_rejects"]
    skipped = listed - scored - rejected  # one reject row per content; its other paths are skipped
    summary = {"run_id": run_id, "model": model, "model_version": version, "archive": archive,
               "listed": listed, "new_files": len(new_paths), "scored": scored, "rejected": rejected,
               "skipped": skipped, "seconds": round(time.perf_counter() - t_start, 1),
               "rejected_by_reason": {r["reason"]: r["count"] for r in
                                      spark.read.parquet(tables["score_rejects"]).filter(F.col("run_id") == run_id)
                                      .groupBy("reason").count().collect()} if rejected else {}}
    log.info("score: %d listed = %d scored + %d rejected + %d skipped (already done or duplicate content); "
             "%.1fs", listed, scored, rejected, skipped, summary["seconds"])
    results.unpersist()
    files.unpersist()
    listing.unpersist()
    return summary


def _clean_staging(root: str, keep: str | None = None) -> None:
    """Remove staging left by killed runs (never committed, so nothing is lost)."""
    import pyarrow.fs as pafs
    fs, path = storage.filesystem(storage.join(root, "tables", "_staging"))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.base_name != keep:
            log.info("score: removing uncommitted staging of run %s", info.base_name)
            fs.delete_dir(info.path)


def _commit(root: str, run_id: str) -> None:
    """Move this run's partition directories from staging into the tables.
    The predictions go last: a crash before it leaves files indexed but unscored, which the next
    run scores (its ``done`` check finds no prediction), never the other way round."""
    import pyarrow.fs as pafs
    staging = storage.join(root, "tables", "_staging", run_id)
    for table in ("score_rejects", "score_files", "predictions"):
        fs, src = storage.filesystem(f"{staging}/{table}")
        _, dst = storage.filesystem(storage.join(root, "tables", table))
        for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("run_id="):
                rel = info.path[len(src):].lstrip("/")
                target = f"{dst}/{rel}"
                fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                fs.move(info.path, target)
    fs, path = storage.filesystem(staging)
    fs.delete_dir(path)
