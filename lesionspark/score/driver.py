"""Score (driver side): incremental, idempotent bulk scoring of an image archive.

A run lists the archive in executors (``listing``), matches the listing against the file index
(path, length and mtime unchanged = seen, its hash known), and reads only the files it must: new
ones, and one path of each known content not yet scored by this model version. Each of those is
read once, in the task that hashes, decodes and predicts it (``executor.score_files``); the raw
results are written once, and the tables are derived from them: each new image content is scored
once per model version (the first path of a content; every path is recorded in ``score_files``).
Nothing per file comes back to the driver. The run commits its rows by renaming its ``run_id=``
partition directories into the tables (on object stores, which cannot, their files one by one). A run killed at any point
leaves only ``tables/_staging/<run_id>/``, which Spark ignores and the next run removes, so a
rerun ends with exactly one prediction per (image_sha256, model, model_version).
"""
from __future__ import annotations

import datetime as dt
import logging
import time

from ..core import pathkey
from ..store import storage
from ..store.layout import Layout
from ..core.classes import malignant_outputs
from ..core.config import Config, ConfigError
from ..dataset.clinical import card_fields, drop_shared, load_sidecar
from ..imaging.dicom import IDENTIFIERS
from ..store.listing import Reader, list_files
from ..inference.spec import build as build_spec
from .dicom_out import DicomOut
from .executor import score_files, score_files_schema
from ..imaging import dicom_results
from ..core.progress import PhaseClock, timed
from ..store.registry import explanations_dir, resolve_model
from ..store.spark import sql_conf, task_count

log = logging.getLogger(__name__)

TABLES = ("predictions", "score_rejects", "score_files")
ALTERNATES = 4  # other paths of a known content tried when its first path cannot be read
# what a run's reading tasks carry through, beside what they compute (plan's to_read columns)
PASSTHROUGH = {"path": "string", "path_key": "string", "length": "long", "modificationTime": "timestamp",
               "new": "boolean", "alt_paths": "array<string>", "alt_keys": "array<string>",
               "alt_lengths": "array<bigint>", "known_sha256": "string"}


class ScoreError(ConfigError):
    """The run cannot start (model or archive missing, unreadable card): exit code 2."""


class ScoreLocked(RuntimeError):
    """Score: another live run holds the storage root; try again later (EX_TEMPFAIL): exit 75."""
    exit_code = 75


class ScoreFenced(RuntimeError):
    """Score: the run lost the root's lease (it stalled past its ttl, or another run took over) and
    stopped, before committing or part-way through a commit whose order keeps the tables consistent:
    exit 4."""
    exit_code = 4


class DriftAlert(RuntimeError):
    """Score: the run succeeded and committed, but its predictions drifted and ``score.fail_on_drift``
    is on: exit 3."""
    exit_code = 3


def _table(layout_root: str, name: str) -> str:
    return Layout(layout_root).table(name)


def _read_table(spark, uri: str, schema: str):
    """The columns ``schema`` names of a table; empty where it has no data file yet (a commit killed
    after creating a partition's folder and before moving the partition in leaves such a folder)."""
    if storage.exists(uri):
        return spark.read.schema(schema).parquet(uri)
    return spark.createDataFrame([], schema)


# Rejects that a limit decided (score_rejects.limits records the limits in force): done only while
# those limits stand, so that raising a limit rescores them. A file over archive.max_file_bytes, or
# one whose read passed its deadline, has no hash and is judged again by every run anyway.
LIMIT_REASONS = ("too_many_pixels", "over_memory_budget", "too_many_frames")


def limits(cfg: Config) -> str:
    """The decode limits in force, as ``score_rejects.limits`` records them."""
    return (f"max_image_pixels={int(cfg.get('limits.max_image_pixels'))},"
            f"max_decoded_bytes={int(cfg.get('limits.max_decoded_bytes'))}")


def _done(spark, tables: dict, model: str, version: str, current_limits: str):
    """Contents already predicted or rejected for this model version (``image_sha256``); a reject
    by a limit counts only while the limits it was judged under still stand."""
    from pyspark.sql import functions as F
    preds = _read_table(spark, tables["predictions"], "image_sha256 string, model string, model_version string")
    rejects = _read_table(spark, tables["score_rejects"],
                          "image_sha256 string, model string, model_version string, reason string, limits string")
    stands = ~F.col("reason").isin(*LIMIT_REASONS) | (F.coalesce(F.col("limits"), F.lit("")) == current_limits)
    frames = [df.filter((F.col("model") == model) & (F.col("model_version") == version)).select("image_sha256")
              for df in (preds, rejects.filter(stands))]
    return frames[0].unionByName(frames[1]).filter(F.col("image_sha256").isNotNull()).distinct()


def plan(spark, cfg: Config, archive: str, model: str, version: str, tables: dict):
    """The run as DataFrames, nothing per file on the driver: (files, to_read, done).

    ``files``: every listed file with its content hash where the index knows it (path, length and
    modification time unchanged), else null. ``to_read``: the files whose bytes this run must read:
    every file the index does not know (to hash it), and the first path of each known content that
    has no prediction or reject for this model version yet (a new model version rescoring an archive,
    or a run that died between committing its index and its predictions)."""
    from pyspark.sql import functions as F
    listing = list_files(spark, [archive], regex=cfg.get("archive.path_regex"),
                         follow_links=bool(cfg.get("archive.follow_links"))) \
        .withColumn("path_key", pathkey.column(spark, pathkey.salt(cfg)))
    index = _read_table(spark, tables["score_files"],
                        "path_key string, length long, modificationTime timestamp, image_sha256 string")
    index = index.select("path_key", "length", "modificationTime", "image_sha256").dropDuplicates(
        ["path_key", "length", "modificationTime"])
    files = listing.join(index, ["path_key", "length", "modificationTime"], "left").select(
        "path", "path_key", "length", "modificationTime", "image_sha256")
    done = _done(spark, tables, model, version, limits(cfg))
    # a known content is read from its first path; up to ALTERNATES more paths are tried if that fails
    paths = F.sort_array(F.collect_list(F.struct("path", "path_key", "length", "modificationTime")))
    seen_todo = files.filter(F.col("image_sha256").isNotNull()).join(done, "image_sha256", "left_anti") \
        .groupBy("image_sha256").agg(paths.alias("all")) \
        .select(F.col("all")[0].alias("f"), F.slice("all", 2, ALTERNATES).alias("alt"), "image_sha256") \
        .select("f.*", F.lit(False).alias("new"), F.col("alt.path").alias("alt_paths"),
                F.col("alt.path_key").alias("alt_keys"), F.col("alt.length").alias("alt_lengths"),
                F.col("image_sha256").alias("known_sha256"))
    new = files.filter(F.col("image_sha256").isNull()).select(
        "path", "path_key", "length", "modificationTime", F.lit(True).alias("new"),
        F.array().cast("array<string>").alias("alt_paths"), F.array().cast("array<string>").alias("alt_keys"),
        F.array().cast("array<bigint>").alias("alt_lengths"), F.lit(None).cast("string").alias("known_sha256"))
    return files, new.unionByName(seen_todo), done


def _setup(cfg: Config) -> tuple[str, str, dict, str]:
    root = storage.normalize_uri(cfg.get("storage.root"))
    archive = cfg.get("score.archive")
    if not archive:
        raise ScoreError("score needs score.archive (--archive <uri>)")
    archive = storage.normalize_uri(archive)
    if not storage.exists(archive):
        raise ScoreError(f"archive {archive} does not exist")
    card, model_uri = resolve_model(root, cfg.get("score.model"))
    if cfg.get("score.hash_paths") and not cfg.get("score.path_salt"):
        raise ScoreError("score.hash_paths needs score.path_salt (keep it secret and the same across runs)")
    if cfg.get("score.dicom_results"):
        try:
            dicom_results.check_root(cfg.get("dicom.uid_root"))
        except ValueError as exc:
            raise ScoreError(str(exc)) from None
    return root, archive, card, model_uri


def _dicom_out(cfg: Config, root: str, staging: str, card: dict, spec, threshold: float) -> DicomOut | None:
    """What the tasks need to write DICOM results (``score.dicom_results``), or None."""
    if not cfg.get("score.dicom_results"):
        return None
    uid_root = cfg.get("dicom.uid_root")
    if uid_root == dicom_results.EXAMPLE_ROOT:
        log.warning("score: DICOM results get UIDs under pydicom's example root %s: set dicom.uid_root to your "
                    "organisation's root before sending them to a PACS", uid_root)
    return DicomOut(uid_root, f"{staging}/dicom", Layout(root).dicom_results(card["name"], card["version"]),
                    dicom_results.ModelIdentity.from_card(card, spec.heatmap), tuple(card["classes"]), threshold,
                    spec.resize)


def review_threshold(card: dict, cfg: Config) -> tuple[float, str]:
    """(threshold, where it came from): the operating threshold ``evaluate`` wrote into the card,
    else ``evaluate.default_threshold``."""
    op = card.get("operating_threshold") or {}
    if op.get("value") is not None:
        return float(op["value"]), f"model_card:{op.get('split')}@sens{op.get('target_sensitivity')}"
    return float(cfg.get("evaluate.default_threshold")), "default"


def score(spark, cfg: Config, run_id: str | None = None) -> dict:
    """One scoring run under the root's lease, recorded in ``score_runs`` whatever becomes of it.

    ``spark`` may be a SparkSession or a function that makes one: the CLI passes the function, so
    that a run records itself and takes the lease before starting a JVM (a run waiting for the
    root holds no cluster resources, and one killed while Spark starts is found by the next run)."""
    import os
    import socket
    from ..store import runlog
    from ..store.lease import Lease, LeaseHeld, LeaseLost

    run_id = run_id or storage.new_run_id()
    started = dt.datetime.now(dt.timezone.utc)
    root, archive, card, model_uri = _setup(cfg)
    if cfg.get("score.dry_run"):
        return dry_run(spark() if callable(spark) else spark, cfg, root, archive, card)
    row = {"model": card["name"], "model_version": card["version"], "archive": archive, "started_at": started,
           "host": socket.gethostname(), "pid": os.getpid()}
    lease = Lease(Layout(root).lease(), run_id, float(cfg.get("score.lease_ttl_s")),
                  float(cfg.get("score.lease_wait_s")), info={"model": f"{card['name']}:{card['version']}",
                                                             "archive": archive},
                  single_writer=bool(cfg.get("storage.single_writer")))
    runlog.write(root, run_id, {**row, "status": "waiting"})
    try:
        lease.acquire()
    except LeaseHeld as exc:
        runlog.write(root, run_id, {**row, "status": "locked", "error": str(exc),
                                    "finished_at": dt.datetime.now(dt.timezone.utc)})
        raise ScoreLocked(str(exc)) from None
    try:
        runlog.reap(root, run_id)
        runlog.write(root, run_id, {**row, "status": "running"})
        spark = spark() if callable(spark) else spark
        summary = _score(spark, cfg, run_id, root, archive, card, model_uri, lease)
        runlog.write(root, run_id, {**row, **summary, "status": "succeeded",
                                    "finished_at": dt.datetime.now(dt.timezone.utc)})
    except LeaseLost as exc:
        runlog.write(root, run_id, {**row, "status": "fenced", "error": f"lost the lease: {exc}",
                                    "finished_at": dt.datetime.now(dt.timezone.utc),
                                    "seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds()})
        raise ScoreFenced(f"run {run_id} lost the lease and stopped: {exc}") from None
    except BaseException as exc:  # KeyboardInterrupt and SIGTERM too: the row says what happened
        runlog.write(root, run_id, {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                    "finished_at": dt.datetime.now(dt.timezone.utc),
                                    "seconds": (dt.datetime.now(dt.timezone.utc) - started).total_seconds()})
        raise
    finally:
        lease.release()
    if summary["drift_alert"] and cfg.get("score.fail_on_drift"):
        raise DriftAlert(f"drift: PSI {summary['drift_psi']:.3f} of the predicted classes against the model's "
                         f"reference > score.drift_psi_threshold={cfg.get('score.drift_psi_threshold')} "
                         f"(run {run_id} was committed)")
    return summary


def dry_run(spark, cfg: Config, root: str, archive: str, card: dict) -> dict:
    """What a run would do, from the listing and the tables; reads no image and writes nothing."""
    from pyspark.sql import functions as F
    tables = {t: _table(root, t) for t in TABLES}
    files, to_read, _ = plan(spark, cfg, archive, card["name"], card["version"], tables)
    listed, known = files.agg(F.count("*"), F.count("image_sha256")).collect()[0]
    n_read, n_new = to_read.agg(F.count("*"), F.sum(F.col("new").cast("int"))).collect()[0]
    out = {"dry_run": True, "model": card["name"], "model_version": card["version"], "archive": archive,
           "listed": listed, "known_to_index": known, "would_hash": n_new or 0,
           "would_read_and_score_at_most": n_read, "would_skip_at_least": listed - n_read,
           "review_threshold": dict(zip(("value", "source"), review_threshold(card, cfg)))}
    log.info("score --dry-run: %d listed; would hash %d new files, read and score at most %d, skip at least %d "
             "(new files that turn out to be known contents are skipped too); nothing written",
             listed, out["would_hash"], n_read, out["would_skip_at_least"])
    return out


def _plan_counts(spark, cfg: Config, archive: str, model: str, version: str, tables: dict):
    """Step 1, small rows only, all in executors: list, match the index, find what is not done.
    (files, to_read, done, listed, known to the index, to read, new), the first two persisted."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    with timed(log, "listing + index", "files", spark) as step:
        files, to_read, done = plan(spark, cfg, archive, model, version, tables)
        files = files.persist(StorageLevel.MEMORY_AND_DISK)
        to_read = to_read.persist(StorageLevel.MEMORY_AND_DISK)
        listed, known = files.agg(F.count("*"), F.count("image_sha256")).collect()[0]
        n_read, n_new = to_read.agg(F.count("*"), F.sum(F.col("new").cast("int"))).collect()[0]
        step.count = listed
    log.info("score: %d listed: %d known to the index, %d new; %d files to read (hash%s)", listed, known, n_new or 0,
             n_read, ", decode and predict" if n_read else "")
    return files, to_read, done, listed, n_read, n_new or 0


def _read_predict(spark, cfg: Config, files, to_read, n_read: int, archive: str, card: dict, model_uri: str,
                  root: str, staging: str, threshold: float, clock: PhaseClock) -> None:
    """Step 2: each file read once where its row is (hash, decode, predict), the raw results
    written once under ``<staging>/raw``; flagged images' overlays staged beside them."""
    tasks = task_count(spark, n_read, int(cfg.get("score.files_per_task")))
    overlays = (threshold, f"{staging}/flagged", f"{explanations_dir(root, card)}/flagged") \
        if cfg.get("score.explain_flagged") else None
    reader = Reader([archive], bool(cfg.get("archive.follow_links")), float(cfg.get("archive.read_timeout_s")))
    spec = build_spec(cfg, card, model_uri)
    fn = score_files(spec, reader, list(PASSTHROUGH), clock, overlays,
                     pathkey.share(spark, cfg.get("score.path_salt")),
                     drop_shared(spark, files, load_sidecar(cfg.get("archive.metadata_csv"), card_fields(card))),
                     _dicom_out(cfg, root, staging, card, spec, threshold))
    schema = score_files_schema(", ".join(f"{k} {t}" for k, t in PASSTHROUGH.items()))
    with sql_conf(spark, spark_sql_execution_arrow_maxRecordsPerBatch=int(cfg.get("inference.arrow_batch_rows"))), \
            timed(log, f"read + hash + decode + predict {n_read} files", spark=spark) as step:
        to_read.repartition(tasks).mapInPandas(fn, schema).write.parquet(f"{staging}/raw")
        step.count = n_read
    log.info("score: inside Python workers (seconds summed over tasks): %s", clock.summary())


def _score(spark, cfg: Config, run_id: str, root: str, archive: str, card: dict, model_uri: str, lease) -> dict:
    t_start = time.perf_counter()
    model, version = card["name"], card["version"]
    tables = {t: _table(root, t) for t in TABLES}
    staging = Layout(root).staging(run_id)
    _clean_staging(root, run_id)
    threshold, threshold_source = review_threshold(card, cfg)
    log.info("score %s:%s on %s (run %s); review threshold %.4f (%s)", model, version, archive, run_id,
             threshold, threshold_source)
    files, to_read, done, listed, n_read, n_new = _plan_counts(spark, cfg, archive, model, version, tables)
    clock = PhaseClock(spark, ("files", "read_hash", "decode", "predict"))
    raw = f"{staging}/raw" if n_read else None
    if n_read:
        _read_predict(spark, cfg, files, to_read, n_read, archive, card, model_uri, root, staging, threshold, clock)
    to_read.unpersist()

    # 3. From the raw results (small rows): index rows, one prediction or reject per new content.
    now = dt.datetime.now(dt.timezone.utc)
    with timed(log, "write tables", "rows", spark) as step:
        counts = _write_results(spark, raw, done, card, run_id, now, staging, threshold, limits(cfg))
        step.count = sum(counts[t] for t in TABLES)
    lost = _check_accounting(spark, files, raw, done, staging) if n_read else 0
    if lost:
        raise ScoreError(f"accounting failed: {lost} listed files would have neither a prediction nor a reject; "
                         "nothing was committed")
    stats = run_stats(spark, staging, card, cfg, counts["predictions"])
    _commit(root, run_id, lease.check, f"{explanations_dir(root, card)}/flagged",  # fenced: stops moving once lost
            dicom_dir=Layout(root).dicom_results(model, version))
    scored, rejected = counts["predictions"], counts["score_rejects"]
    skipped = listed - scored - rejected  # already done, or another path of a content scored now
    summary = {"run_id": run_id, "model": model, "model_version": version, "archive": archive,
               "listed": listed, "new_files": n_new, "read": n_read, "scored": scored, "images": counts["images"],
               "rejected": rejected,
               "skipped": skipped, "seconds": round(time.perf_counter() - t_start, 1),
               "worker_seconds": {k: round(v, 1) for k, v in clock.totals().items() if k != "files"},
               "rejected_by_reason": counts["by_reason"], "review_threshold": threshold,
               "threshold_source": threshold_source, **stats}
    log.info("score: %d listed = %d scored + %d rejected + %d skipped (already done or duplicate content); "
             "%.1fs", listed, scored, rejected, skipped, summary["seconds"])
    files.unpersist()
    return summary


def run_stats(spark, staging: str, card: dict, cfg: Config, n_scored: int) -> dict:
    """Predicted count per class, mean confidence, low-confidence share, flagged count and drift
    (PSI of the predicted-class distribution against the card's reference) of this run's predictions."""
    from pyspark.sql import functions as F
    from ..modeling import monitor
    classes = list(card["classes"])
    low = float(cfg.get("score.low_confidence"))
    out = {"predicted_by_class": {c: 0 for c in classes}, "mean_confidence": None, "low_confidence_share": None,
           "flagged": 0, "drift_psi": None, "drift_alert": False}
    if not n_scored:
        return out
    rows = spark.read.parquet(f"{staging}/predictions").groupBy("predicted_dx").agg(
        F.count("*").alias("n"), F.sum("confidence").alias("conf"),
        F.sum((F.col("confidence") < low).cast("int")).alias("low"),
        F.sum(F.col("review_flag").cast("int")).alias("flagged")).collect()
    n = sum(r["n"] for r in rows)
    out.update(predicted_by_class={**out["predicted_by_class"], **{r["predicted_dx"]: r["n"] for r in rows}},
               mean_confidence=sum(r["conf"] for r in rows) / n, low_confidence_share=sum(r["low"] for r in rows) / n,
               flagged=sum(r["flagged"] for r in rows))
    ref = card.get("reference")
    if not ref:
        log.info("score: the model card has no reference distribution (evaluate the model first): no drift check")
        return out
    out["drift_psi"] = monitor.psi(ref["predicted_share"], monitor.shares(out["predicted_by_class"], classes))
    limit, min_n = float(cfg.get("score.drift_psi_threshold")), int(cfg.get("score.drift_min_images"))
    if out["drift_psi"] > limit and n >= min_n:
        out["drift_alert"] = True
        log.warning("score: DRIFT: PSI %.3f > %.2f for the predicted classes of %d images against the model's "
                    "%s reference (%s)", out["drift_psi"], limit, n, ref.get("split"),
                    ", ".join(f"{c} {out['predicted_by_class'][c] / n:.2f} vs {ref['predicted_share'][c]:.2f}"
                              for c in classes))
    else:
        log.info("score: drift PSI %.3f (alert above %.2f with at least %d images; this run scored %d)",
                 out["drift_psi"], limit, min_n, n)
    return out


def _results_frames(spark, raw: str, done, card: dict, run_id: str, now, threshold: float, current_limits: str):
    """(predictions, rejects, index rows) of a run from its raw results."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    results = spark.read.parquet(raw)
    model, version, classes = card["name"], card["version"], card["classes"]
    first_image = F.coalesce(F.col("frame"), F.lit(1)) == 1  # a file's first (or only) image row
    index_rows = results.filter(F.col("new") & F.col("image_sha256").isNotNull() & first_image).select(
        "path_key", "length", "modificationTime", "image_sha256", F.lit(run_id).alias("run_id"))
    # One row per image of a content not done before, from its first path (the others are skipped).
    first = Window.partitionBy("image_sha256", "frame").orderBy("path")
    chosen = results.filter(F.col("image_sha256").isNotNull()).join(done, "image_sha256", "left_anti") \
        .withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")
    probs = F.col("probabilities")
    predicted_label = F.expr("array_position(probabilities, array_max(probabilities)) - 1").cast("int")
    preds = chosen.filter(F.col("reason").isNull()).select(
        F.col("explanation_path").alias("_explanation_path"),
        F.col("path_key").alias("image_path"), "image_sha256", "frame", *IDENTIFIERS,
        F.lit(model).alias("model"), F.lit(version).alias("model_version"),
        F.element_at(F.array(*[F.lit(c) for c in classes]), predicted_label + 1).alias("predicted_dx"),
        predicted_label.alias("predicted_label"), F.array_max(probs).alias("confidence"), probs.alias("probabilities"),
        sum((F.element_at(probs, i + 1) for i in malignant_outputs(classes)), F.lit(0.0)).alias("malignant_probability"),
        "metadata_missing", "age_group", "sex", "localization",
        "dicom_sr_uid", "dicom_sr_path", "dicom_seg_uid", "dicom_seg_path", "dicom_note",
        F.lit(run_id).alias("run_id"), F.lit(now).cast("timestamp").alias("scored_at"),
        F.lit(now.date().isoformat()).alias("scored_date"))
    preds = preds.withColumn("review_flag", F.col("malignant_probability") >= F.lit(threshold)) \
        .withColumn("explanation_path", F.col("_explanation_path")).drop("_explanation_path")
    # Unreadable files have no hash: rejected in this run, tried again by the next.
    rejects = chosen.filter(F.col("reason").isNotNull()).unionByName(results.filter(F.col("image_sha256").isNull())) \
        .select(F.col("path_key").alias("image_path"), "image_sha256", F.lit(model).alias("model"),
                F.lit(version).alias("model_version"), "reason", "detail", F.lit(run_id).alias("run_id"),
                F.lit(now).cast("timestamp").alias("at"),
                F.when(F.col("reason").isin(*LIMIT_REASONS), F.lit(current_limits)).alias("limits"))
    return preds, rejects, index_rows


def _write_results(spark, raw: str | None, done, card: dict, run_id: str, now, staging: str,
                   threshold: float, current_limits: str) -> dict:
    if raw is None:
        return {"predictions": 0, "images": 0, "score_rejects": 0, "score_files": 0, "by_reason": {}}
    frames = dict(zip(TABLES, _results_frames(spark, raw, done, card, run_id, now, threshold, current_limits)))
    for table, df in frames.items():
        df.write.partitionBy(*(["scored_date"] if table == "predictions" else []), "run_id") \
            .parquet(f"{staging}/{table}")
    written = {t: _staged(spark, staging, t, df.schema) for t, df in frames.items()}
    counts = {t: df.count() for t, df in written.items()}
    counts["images"] = counts["predictions"]  # a multi-frame DICOM object is one content, several images
    counts["predictions"] = written["predictions"].select("image_sha256").distinct().count()
    counts["by_reason"] = {r["reason"]: r["count"] for r in
                           written["score_rejects"].groupBy("reason").count().collect()}
    return counts


def _staged(spark, staging: str, table: str, schema):
    """A table as this run staged it (an empty write leaves no Parquet file to infer a schema from)."""
    return spark.read.schema(schema).parquet(f"{staging}/{table}")


def _check_accounting(spark, files, raw: str, done, staging: str) -> int:
    """Listed files whose content ends with neither a prediction nor a reject (must be 0)."""
    from pyspark.sql import functions as F
    results = spark.read.parquet(raw).select("path", F.col("image_sha256").alias("sha_now"), "reason")
    covered = done.unionByName(_staged(spark, staging, "predictions", "image_sha256 string").select("image_sha256")) \
        .unionByName(_staged(spark, staging, "score_rejects", "image_sha256 string").select("image_sha256")) \
        .filter(F.col("image_sha256").isNotNull()).distinct()
    final = files.join(results, "path", "left").select(
        F.coalesce("sha_now", "image_sha256").alias("image_sha256"), "sha_now", "reason")
    # an entry this run could not read (unreadable, a link, a special file) got no hash: its reject
    # row in this run accounts for it (a known content then stays undone, tried again next run)
    no_content = F.col("sha_now").isNull() & F.col("reason").isNotNull()
    return final.filter(~no_content).join(covered, "image_sha256", "left_anti").count()


def _clean_staging(root: str, keep: str | None = None) -> None:
    """Remove staging left by killed runs (never committed, so nothing is lost)."""
    import pyarrow.fs as pafs
    fs, path = storage.filesystem(Layout(root).staging())
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.base_name != keep:
            log.info("score: removing uncommitted staging of run %s", info.base_name)
            fs.delete_dir(info.path)


def _commit(root: str, run_id: str, fence=None, flagged_dir: str | None = None, per_file: bool | None = None,
            dicom_dir: str | None = None) -> int:
    """Move this run's partition directories from staging into the tables; the number of moves.
    The predictions go last: a crash before it leaves files indexed but unscored, which the next
    run scores (its ``done`` check finds no prediction), never the other way round. ``fence`` (the
    lease's check) runs before every move: a run that lost the lease stops there (``LeaseLost``).
    Flagged overlays (patient images) go first, into ``flagged_dir``, and the DICOM results into
    ``dicom_dir``: a failed or fenced run leaves none behind outside its staging, and a prediction
    never names a file not yet in place (each is named by its content or its derived UID: moving
    it again replaces it).

    ``per_file`` (the default where the root cannot move a directory: object stores) moves each
    file of a partition on its own, each one whole (S3: copy, then delete). A crash then leaves
    part of a partition: rows of an image are in one file, so the next run finds those images
    done and scores the rest, as it does after a crash between two partitions."""
    import pyarrow.fs as pafs
    per_file = not storage.contract(root).dir_rename if per_file is None else per_file
    staging = Layout(root).staging(run_id)
    moved = 0
    if fence is not None:
        fence()  # before anything is created outside the staging
    for folder, final in (("flagged", flagged_dir), ("dicom", dicom_dir)):
        fs, src = storage.filesystem(f"{staging}/{folder}")
        if not final or fs.get_file_info(src).type != pafs.FileType.Directory:
            continue
        _, dst = storage.filesystem(final)
        fs.create_dir(dst, recursive=True)
        for info in fs.get_file_info(pafs.FileSelector(src)):
            if fence is not None:
                fence()
            fs.move(info.path, f"{dst}/{info.base_name}")  # named by content or UID: replacing is rewriting
            moved += 1
    for table in ("score_rejects", "score_files", "predictions"):
        fs, src = storage.filesystem(f"{staging}/{table}")
        _, dst = storage.filesystem(Layout(root).table(table))
        infos = fs.get_file_info(pafs.FileSelector(src, recursive=True, allow_not_found=True))
        for info in infos:
            if info.type == pafs.FileType.Directory and info.base_name.startswith("run_id="):
                moves = [i.path for i in infos if i.type == pafs.FileType.File
                         and i.path.startswith(info.path + "/")] if per_file else [info.path]
                for path in sorted(moves):
                    target = f"{dst}/{path[len(src):].lstrip('/')}"
                    if fence is not None:
                        fence()
                    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                    fs.move(path, target)
                    moved += 1
    fs, path = storage.filesystem(staging)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    return moved
