"""Evaluate (driver side): score dataset splits with a model version, compute the metrics, write
the metrics table rows and the report.

Scoring is distributed: the split's Petastorm files are read by Spark and predicted in executors
(``executor.predict_records``) by the same predictor as ``score`` and ``explain``
(``inference.predictor``: decode, the card's preprocessing, ``model.predict``, calibration).
Only the per-image probabilities (7 doubles an image) come back to the driver, where scikit-learn
computes the metrics (``modeling.metrics``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time

import numpy as np
import pandas as pd

from ..modeling import calibration
from ..modeling import metrics
from ..store import storage
from ..store.layout import Layout
from ..store import parquet
from ..dataset.clinical import card_fields, for_card
from ..core.config import Config, ConfigError
from ..dataset.writer import require_manifest
from ..core.progress import timed
from ..store.registry import MAX_CARD_BYTES, resolve_model
from .report import pick_examples, write_report
from .results import calibrate_frame, scored, truth
from ..dataset.splitread import read_split
from ..inference.spec import build as build_spec
from .executor import predict_records, predictions_schema

log = logging.getLogger(__name__)

METRICS_SCHEMA = (("model", "string"), ("model_version", "string"), ("dataset", "string"), ("split", "string"),
                  ("metric", "string"), ("class", "string"), ("value", "double"), ("evaluated_at", "timestamp"),
                  ("run_id", "string"))


def report_dir(root: str, card: dict, dataset: str) -> str:
    """``reports/<model>/<version>/`` (or ``<version>-on-<dataset>`` for a dataset other than the one
    the model was trained on, so that the two reports do not replace each other)."""
    version = card["version"] if dataset == card.get("dataset", dataset) else f"{card['version']}-on-{dataset}"
    return Layout(root).report(card["name"], version)


def predict_split(spark, url: str, card: dict, model_uri: str, cfg: Config) -> pd.DataFrame:
    """Per-image probabilities of one Petastorm split, scored in executors (which read the split
    with pyarrow: ``splitread``)."""
    from pyspark.sql import functions as F
    from ..store.spark import sql_conf
    fields = list(card_fields(card))
    images = read_split(spark, url, ["image_id", "sha256", "image", *fields]) \
        .select(F.col("image_id").alias("path"), "sha256", F.col("image").alias("content"), *fields) \
        .repartition(max(1, spark.sparkContext.defaultParallelism))
    scored = images.mapInPandas(predict_records(build_spec(cfg, card, model_uri)), predictions_schema())
    joined = read_split(spark, url, ["image_id", "lesion_id", "dx", "label", "malignant"]).join(
        scored.select(F.col("path").alias("image_id"), "probabilities", "reason", "detail"), "image_id", "left")
    with sql_conf(spark, spark_sql_execution_arrow_maxRecordsPerBatch=int(cfg.get("inference.arrow_batch_rows"))):
        return joined.toPandas().sort_values("image_id", ignore_index=True)


def split_result(frame: pd.DataFrame, classes: list[str], threshold: float, cfg: Config,
                 raw: pd.DataFrame | None = None, temperature: float = 1.0) -> dict:
    """All metrics of one scored split (rows with a reject reason are counted, not scored). ``frame``
    holds the calibrated probabilities; ``raw``, where given, the model's own, for the ECE before."""
    good, probs, p_mal = scored(frame, classes)
    if good.empty:
        raise ConfigError(f"nothing to evaluate: the split has {len(frame)} images and none could be scored")
    y = truth(good, classes)
    y_mal = good["malignant"].to_numpy().astype(int)
    result = metrics.classification(y, probs, classes)
    result["overall"]["n_rejected"] = int(len(frame) - len(good))
    target = float(cfg.get("evaluate.target_sensitivity"))
    result["malignant"] = metrics.malignant_view(y_mal, p_mal, float(cfg.get("evaluate.default_threshold")),
                                                 threshold, target)
    result["ci"] = metrics.bootstrap_ci(y, probs.argmax(axis=1), good["lesion_id"].to_numpy(), len(classes),
                                        int(cfg.get("evaluate.bootstrap")), int(cfg.get("evaluate.seed")))
    n_bins = int(cfg.get("evaluate.calibration_bins"))
    result["calibration"] = metrics.calibration(y, probs, n_bins)
    result["calibration"]["temperature"] = float(temperature)
    if raw is not None:
        result["calibration_uncalibrated"] = metrics.calibration(y, scored(raw, classes)[1], n_bins)
    if len(frame) > len(good):
        result["warnings"].append(f"{len(frame) - len(good)} images could not be scored (see predictions_*.parquet)")
    if np.isnan(threshold):
        result["warnings"].append("no threshold for the target sensitivity: the threshold split lacks malignant "
                                  "or benign images")
    return result


def gradcam_examples(spark, url: str, frame: pd.DataFrame, card: dict, model_uri: str, cfg: Config, split: str):
    """(split, examples, overlays) for the report's Grad-CAM grid: a few images per class, picked
    from the split by executors (only those rows come to the driver) and explained on the driver."""
    from pyspark.sql import functions as F
    from ..modeling.overlays import explain_arrays
    from ..imaging.images import decode_each
    from ..inference.predictor import load_model
    classes = list(card["classes"])
    good, probs, _ = scored(frame, classes)
    examples = pick_examples(good, probs, truth(good, classes), classes, int(cfg.get("evaluate.gradcam_examples")))
    if examples.empty:
        return None
    rows = read_split(spark, url, ["image_id", "image", *card_fields(card)]) \
        .filter(F.col("image_id").isin(list(examples["image_id"]))).toPandas() \
        .set_index("image_id").loc[examples["image_id"]]
    arrays, _, _ = decode_each(list(rows["image"]), int(card["image_size"]), card["resize"])
    images = np.stack(arrays)
    meta, _ = for_card(card, rows[list(card_fields(card))].to_dict("records"))
    _, _, overlays = explain_arrays(load_model(model_uri), card, images, cfg.get("inference.heatmap"), meta)
    return split, examples, images, overlays


def metrics_file(root: str, model: str, version: str, dataset: str, split: str) -> str:
    """One Parquet file per (model, version, dataset, split): a rerun replaces exactly its own rows."""
    key = hashlib.sha1(f"{model}\0{version}\0{dataset}\0{split}".encode()).hexdigest()[:20]
    return f"{Layout(root).table('metrics')}/part-{key}.parquet"


def write_metrics(root: str, rows: list[dict], model: str, version: str, dataset: str, split: str) -> str:
    import pyarrow as pa
    types = {"string": pa.string(), "double": pa.float64(), "timestamp": pa.timestamp("us", tz="UTC")}
    schema = pa.schema([(name, types[t]) for name, t in METRICS_SCHEMA])
    table = pa.Table.from_pylist(rows, schema=schema)
    final = metrics_file(root, model, version, dataset, split)
    storage.replace_file(final, parquet.parquet_bytes(table))
    return final


def _splits(cfg: Config, layout: Layout, dataset: str) -> list[str]:
    """The threshold split first, then the reported ones; each must exist."""
    splits = list(dict.fromkeys([cfg.get("evaluate.threshold_split"), *cfg.get("evaluate.splits")]))
    for split in splits:
        if not storage.exists(layout.split(dataset, split)):
            raise ConfigError(f"dataset {dataset!r} has no split {split!r}")
    return splits


def _temperature(cfg: Config, card: dict, frame: pd.DataFrame, own: bool) -> float:
    """Fitted on the threshold split of the model's own dataset; on another dataset, the card's."""
    if not own:
        return calibration.temperature(card)
    classes = list(card["classes"])
    val_ok, val_probs, _ = scored(frame, classes)
    return calibration.fit_temperature(truth(val_ok, classes), val_probs, cfg.get("evaluate.calibration_objective"),
                                       int(cfg.get("evaluate.calibration_bins")))


def _calibration_facts(cfg: Config, card: dict, own: bool, split: str, temperature: float) -> dict:
    """What this run did for calibration, as the report states it: fitted here (split, objective,
    bins), or the card's temperature with what the card recorded of its fit."""
    if own:
        return {"method": "temperature", "temperature": temperature, "source": "fitted", "split": split,
                "objective": cfg.get("evaluate.calibration_objective"), "bins": int(cfg.get("evaluate.calibration_bins"))}
    recorded = card.get("calibration") or {}
    return {"method": "temperature", "temperature": temperature, "source": "model card",
            **{k: recorded.get(k) for k in ("split", "objective")}, "bins": recorded.get("bins")}


def _summary(run_id: str, card: dict, dataset: str, out: str, threshold_split: str, threshold: float,
             cfg: Config, results: dict, temperature: float, start: float) -> dict:
    """What ``evaluate`` returns (and the CLI prints)."""
    def split_summary(r: dict) -> dict:
        keys = ("n_images", "n_rejected", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc")
        return {**{k: r["overall"][k] for k in keys}, "malignant_auc": r["malignant"]["malignant_auc"],
                "ci": r["ci"], "ece": r["calibration"]["ece"], "ece_uncalibrated": r["calibration_uncalibrated"]["ece"],
                "log_loss": r["calibration"]["nll"], "log_loss_uncalibrated": r["calibration_uncalibrated"]["nll"],
                "warnings": r["warnings"]}
    return {"run_id": run_id, "model": card["name"], "model_version": card["version"], "dataset": dataset,
            "report": out + "/report.md", "threshold": {"split": threshold_split, "value": threshold,
                                                       "target_sensitivity": cfg.get("evaluate.target_sensitivity")},
            "splits": {s: split_summary(r) for s, r in results.items()},
            "temperature": temperature, "seconds": round(time.perf_counter() - start, 1)}


def evaluate(spark, cfg: Config, run_id: str | None = None) -> dict:
    """Score the splits, fit the temperature and the operating threshold on val, write the metrics
    table and the report, and (own dataset) the card's calibration, threshold and reference."""
    start = time.perf_counter()
    run_id = run_id or storage.new_run_id()
    root = storage.normalize_uri(cfg.get("storage.root"))
    layout = Layout(root)
    card, model_uri = resolve_model(root, cfg.get("evaluate.model"))
    dataset = cfg.get("evaluate.dataset") or card.get("dataset") or cfg.get("dataset.name")
    manifest = require_manifest(layout, dataset)
    if int(manifest["image_size"]) != int(card["image_size"]):
        log.warning("evaluate: dataset %s is %d px, the model takes %d px: images are resized", dataset,
                    manifest["image_size"], card["image_size"])
    threshold_split = cfg.get("evaluate.threshold_split")
    splits = _splits(cfg, layout, dataset)
    classes = list(card["classes"])
    log.info("evaluate %s:%s on %s %s (run %s)", card["name"], card["version"], dataset, splits, run_id)

    raw, results = {}, {}
    raw_card = calibration.uncalibrated(card)  # the model's own outputs: T is fitted on them
    for split in splits:
        with timed(log, f"score {dataset}/{split}") as step:
            raw[split] = predict_split(spark, layout.split(dataset, split), raw_card, model_uri, cfg)
            step.count = len(raw[split])
    own = dataset == card.get("dataset", dataset)
    temperature = _temperature(cfg, card, raw[threshold_split], own)
    log.info("evaluate: temperature %.3f (%s)", temperature, f"fitted on {threshold_split}" if own else "the card's")
    card = {**raw_card, "calibration": _calibration_facts(cfg, card, own, threshold_split, temperature)}
    frames = {s: calibrate_frame(f, temperature) for s, f in raw.items()}
    val_ok, _, val_p_mal = scored(frames[threshold_split], classes)
    threshold = metrics.threshold_for_sensitivity(val_ok["malignant"].to_numpy().astype(int), val_p_mal,
                                                  float(cfg.get("evaluate.target_sensitivity")))
    now = dt.datetime.now(dt.timezone.utc)
    for split in splits:
        with timed(log, f"metrics {dataset}/{split} (bootstrap x{cfg.get('evaluate.bootstrap')})"):
            results[split] = split_result(frames[split], classes, threshold, cfg, raw[split], temperature)
        for w in results[split]["warnings"]:
            log.warning("evaluate %s: %s", split, w)
        rows = [{"model": card["name"], "model_version": card["version"], "dataset": dataset, "split": split,
                 "metric": m, "class": c, "value": v, "evaluated_at": now, "run_id": run_id}
                for m, c, v in metrics.long_rows(results[split], classes)]
        write_metrics(root, rows, card["name"], card["version"], dataset, split)
    out = report_dir(root, card, dataset)
    with timed(log, f"report {out}"):
        history = _history(model_uri.rsplit("/", 1)[0] + "/history.json")
        grid_split = "test" if "test" in frames else splits[-1]
        out = write_report(out, card=card, manifest=manifest, history=history, frames=frames, results=results,
                     threshold_split=threshold_split, threshold=threshold, cfg=cfg, run_id=run_id,
                     gradcam=gradcam_examples(spark, layout.split(dataset, grid_split), frames[grid_split], card,
                                              model_uri, cfg, grid_split))
    if own:
        _card_for_scoring(model_uri.rsplit("/", 1)[0], frames[threshold_split], classes, threshold,
                          threshold_split, cfg, results[threshold_split])
    summary = _summary(run_id, card, dataset, out, threshold_split, threshold, cfg, results, temperature, start)
    log.info("evaluate: %s", "; ".join(f"{s}: bal-acc {r['balanced_accuracy']:.3f} macro-F1 {r['macro_f1']:.3f}"
                                      for s, r in summary["splits"].items()))
    return summary


def _history(uri: str) -> dict:
    """The model's training history for the report's curves; {} (with a warning) where there is no
    regular, readable JSON file (a model folder named by URI can be anywhere: a FIFO must not hang)."""
    if not storage.exists(uri):
        return {}
    try:
        return json.loads(storage.read_regular(uri, MAX_CARD_BYTES))
    except (OSError, ValueError) as exc:
        log.warning("evaluate: no training curves: %s", exc)
        return {}


def _card_for_scoring(model_dir: str, frame: pd.DataFrame, classes: list[str], threshold: float, split: str,
                      cfg: Config, result: dict) -> None:
    """Write into the model card what scheduled scoring needs (docs/contracts.md: Model card): the temperature
    fitted on ``split`` (``calibration``), the operating threshold chosen there for the target
    sensitivity (review flags), and the reference distribution of predicted classes and confidence
    there (drift); all on calibrated outputs (``frame``). Replaced atomically."""
    from ..modeling import monitor
    _, probs, _ = scored(frame, classes)
    uri = model_dir + "/model_card.json"
    card = storage.read_json(uri)
    card["calibration"] = {"method": "temperature", "temperature": result["calibration"]["temperature"],
                           "objective": cfg.get("evaluate.calibration_objective"),
                           "bins": int(cfg.get("evaluate.calibration_bins")), "split": split,
                           "ece_before": result["calibration_uncalibrated"]["ece"],
                           "ece_after": result["calibration"]["ece"],
                           "fitted_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    card["operating_threshold"] = None if np.isnan(threshold) else {
        "value": float(threshold), "split": split, "target_sensitivity": float(cfg.get("evaluate.target_sensitivity")),
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat()}
    card["reference"] = monitor.reference(probs, classes, float(cfg.get("score.low_confidence")), split)
    storage.replace_json(uri, card)
    log.info("evaluate: model card updated with temperature %.3f, the operating threshold (%s) and the %s "
             "reference distribution", card["calibration"]["temperature"],
             "none" if np.isnan(threshold) else f"{threshold:.4f}", split)


def compare(spark, root: str, split: str = "test", dataset: str | None = None) -> pd.DataFrame:
    """Models side by side, from the metrics table (Spark SQL), best balanced accuracy first."""
    from ..sql.query import register
    if "metrics" not in register(spark, root):
        raise ConfigError(f"no metrics table under {root}: run `lesionspark evaluate` first")
    where = f"split = '{split}'" + (f" AND dataset = '{dataset}'" if dataset else "")
    wanted = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "malignant_auc",
              "balanced_accuracy_ci_low", "balanced_accuracy_ci_high", "n_images")
    cols = ", ".join(f"max(CASE WHEN metric = '{m}' THEN value END) AS {m}" for m in wanted)
    return spark.sql(f"""
        SELECT model, model_version, dataset, split, {cols}
        FROM metrics WHERE {where} AND class IS NULL
        GROUP BY model, model_version, dataset, split
        ORDER BY balanced_accuracy DESC""").toPandas().astype({"n_images": "Int64"})

