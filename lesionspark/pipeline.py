"""The stages in order on one configuration: ``pipeline`` (a user's data and cluster) and ``demo``
(the built-in default: generated HAM10000-shaped data, local Spark, no downloads).

Each step is the stage's own library function; the chain only passes the trained model's version on.

Runs on the driver.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from .store import storage
from .store.layout import Layout
from .core.config import Config, ConfigError

log = logging.getLogger(__name__)

STEPS = ("ingest", "balance", "train", "evaluate", "score")

DEMO_QUERIES = (
    ("what the archive was predicted to contain",
     "SELECT predicted_dx, count(*) AS images, round(avg(confidence), 3) AS mean_confidence "
     "FROM predictions GROUP BY predicted_dx ORDER BY images DESC"),
    ("the images most likely malignant, for review first",
     "SELECT image_path, predicted_dx, round(malignant_probability, 3) AS p_malignant "
     "FROM predictions_by_path ORDER BY malignant_probability DESC LIMIT 5"),
    ("test recall of the malignant classes, model by model",
     "SELECT class, model, round(value, 3) AS recall FROM metrics "
     "WHERE split = 'test' AND metric = 'recall' AND class IN ('mel', 'bcc', 'akiec') ORDER BY class, model"),
)


def pipeline(spark, cfg: Config, steps: list[str] | None = None) -> dict:
    """Run ``steps`` (default: all of STEPS; ``score`` only when ``score.archive`` is set).
    ``balance.method`` is the training data too: smote/oversample train on the balanced output,
    weights/none on the ingested train split."""
    from .balance.driver import balance
    from .evaluate.driver import evaluate
    from .ingest.driver import ingest
    from .score.driver import score
    from .train.driver import train
    steps = list(steps or cfg.get("pipeline.steps"))
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ConfigError(f"pipeline.steps: unknown {unknown}; the steps are {list(STEPS)}")
    if "score" in steps and not cfg.get("score.archive"):
        log.info("pipeline: no score.archive set, so the score step is skipped")
        steps.remove("score")
    cfg = cfg.with_overrides({"train.balance": cfg.get("balance.method")})
    out: dict = {}
    for i, step in enumerate(steps, 1):
        log.info("pipeline %d/%d: %s", i, len(steps), step)
        start = time.perf_counter()
        if step == "ingest":
            m = ingest(spark, cfg)
            out[step] = {k: m[k] for k in ("dataset", "run_id", "image_size", "counts")}
        elif step == "balance":
            b = balance(spark, cfg)
            out[step] = {k: b[k] for k in ("method", "before", "after")}
        elif step == "train":
            card = train(spark, cfg)
            out[step] = {k: card[k] for k in ("name", "version", "epochs_run", "workers", "train_seconds")}
            model = f"{card['name']}:{card['version']}"
            cfg = cfg.with_overrides({"evaluate.model": model, "score.model": model})
        elif step == "evaluate":
            out[step] = evaluate(spark, cfg)
        elif step == "score":
            out[step] = score(spark, cfg)
        out[step]["step_seconds"] = round(time.perf_counter() - start, 1)
    return out


def _demo_archive(root: str, dataset: str, synth_out: str) -> str:
    """An archive as a hospital would have one: the test split's original JPEGs plus the genuine ones,
    in dated folders."""
    import pyarrow.parquet as pq
    layout = Layout(root)
    fs, path = storage.filesystem(layout.split(dataset, "test"))
    test_ids = set(pq.read_table(path, columns=["image_id"], filesystem=fs).column("image_id").to_pylist())
    archive = Path(root[len("file://"):]) / "raw" / "demo-archive"
    shutil.rmtree(archive, ignore_errors=True)
    for src in sorted(Path(synth_out).rglob("*.jpg")):
        if src.stem in test_ids or src.parent.name == "images_genuine":
            day = "2026-11-01" if src.parent.name == "images_genuine" else "2026-11-02"
            (archive / day).mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, archive / day / src.name)
    return str(archive)


def demo(cfg: Config) -> dict:
    """Synth, then the whole pipeline once per ``demo.methods`` (one model each), then score an
    archive with the first model, compare the models and run the example queries."""
    from .evaluate.driver import compare
    from .store.spark import get_spark
    from .sql.query import run_query
    from .imaging.synth import synth_from_config
    start = time.perf_counter()
    root = storage.normalize_uri(cfg.get("storage.root"))
    if not root.startswith("file://"):
        raise ConfigError("the demo writes its generated images to a local storage.root")
    d = cfg.get("demo")
    cfg = cfg.with_overrides({"dataset.image_size": d["image_size"], "train.epochs": d["epochs"],
                              "train.num_proc": d["num_proc"], "train.samples_per_epoch": d["samples_per_epoch"],
                              "synth.n_images": d["n_images"], "synth.out": root[len("file://"):] + "/raw/demo",
                              "synth.with_genuine": True})
    log.info("demo: synth %d generated images + the 56 genuine ones into %s", d["n_images"], cfg.get("synth.out"))
    made = synth_from_config(cfg)
    cfg = cfg.with_overrides({"ingest.metadata": made["metadata"], "ingest.images": made["images"]})
    spark = get_spark(cfg)
    summary: dict = {"synth": {k: made[k] for k in ("generated", "genuine", "lesions")}, "models": {}}
    for i, method in enumerate(d["methods"]):
        steps = ["ingest"] if i == 0 else []
        steps += ["balance", "train", "evaluate"] if method in ("smote", "oversample") else ["train", "evaluate"]
        log.info("demo: model cnn_%s (balance %s)", method, method)
        run = pipeline(spark, cfg.with_overrides({"balance.method": method, "model.name": f"cnn_{method}"}), steps)
        summary.setdefault("ingest", run.get("ingest"))
        summary["models"][f"cnn_{method}"] = {"version": run["train"]["version"], "report": run["evaluate"]["report"],
                                              "test": run["evaluate"]["splits"]["test"]}
    first = f"cnn_{d['methods'][0]}"
    archive = _demo_archive(root, cfg.get("dataset.name"), cfg.get("synth.out"))
    log.info("demo: score the archive %s with %s", archive, first)
    summary["score"] = pipeline(spark, cfg.with_overrides({"score.archive": archive, "score.model": f"{first}:latest"}),
                                ["score"])["score"]
    summary["compare"] = compare(spark, root, "test")
    summary["queries"] = [(what, sql, run_query(spark, root, sql)) for what, sql in DEMO_QUERIES]
    summary["demo_seconds"] = round(time.perf_counter() - start, 1)
    return summary
