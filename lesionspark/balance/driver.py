"""Balance (driver side): balance the training split: ``smote`` | ``oversample`` | ``weights`` | ``none``.

Driver: per-class counts (seven numbers), targets, the plan. Executors: one Spark task per class
reads that class's training rows with pyarrow, adds its new rows (decoding only classes below their
target; the others pass through undecoded) and writes them all into Petastorm parts itself
(``parts``): no image byte passes through the JVM, and the dataset is never collected. Validation
and test splits are never read.
"""
from __future__ import annotations

import logging
import time
from typing import Mapping


from ..store import storage


from ..store.layout import Layout


from ..store import parquet


from ..store import publishing
from ..core.classes import CLASSES, balanced_weights
from ..core.config import Config, ConfigError
from ..dataset.writer import require_manifest
from ..store.parts import publish, scratch
from ..core.progress import timed
from .executor import balanced_schema, class_tasks

log = logging.getLogger(__name__)

METHODS = ("smote", "oversample", "weights", "none")



def class_targets(counts: Mapping[str, int], target: str = "majority", ratio: float = 1.0,
                  explicit: Mapping[str, int] | None = None) -> dict[str, int]:
    """Rows per class after balancing; never fewer than the class has (no undersampling).

    ``majority``: every class up to the largest count; ``ratio``: each class up to
    ``ratio x majority``; ``counts``: explicit per-class numbers (classes not named stay as they are)."""
    majority = max(counts.values())
    out = {}
    for dx, n in counts.items():
        if target == "majority":
            want = majority
        elif target == "ratio":
            if not 0 < ratio <= 1:
                raise ConfigError(f"balance.ratio must be in (0, 1], got {ratio}")
            want = int(round(ratio * majority))
        elif target == "counts":
            want = int((explicit or {}).get(dx, n))
        else:
            raise ConfigError(f"balance.target must be majority, ratio or counts, got {target!r}")
        out[dx] = max(n, want)
    return out



def class_counts(train_uri: str) -> dict[str, int]:
    """Rows per class of the training split, from its ``dx`` column alone (read on the driver with
    pyarrow: a few bytes a row, no Spark job)."""
    return parquet.value_counts(train_uri, "dx")



def _write_train(spark, train_uri: str, staging: str, parts_uri: str, method: str, size: int, before: dict,
                 targets: dict, cfg: Config) -> dict:
    """The balanced training split as Petastorm at ``<staging>/train``, written by one task per class
    (largest job first) into parts under ``parts_uri``; its per-class counts, which must equal the targets."""
    grow = {dx: targets[dx] - before[dx] for dx in before if targets[dx] > before[dx]}
    if grow:
        log.info("balance: adding %s", grow)
    classes = sorted(before, key=lambda dx: (-grow.get(dx, 0), -before[dx], dx))
    args = (int(cfg.get("balance.k_neighbors")), int(cfg.get("balance.seed")), cfg.get("balance.neighbor_size"),
            int(cfg.get("balance.chunk_rows")), int(cfg.get("balance.synth_chunk_rows")))
    batch_rows = int(cfg.get("balance.chunk_rows"))
    with timed(log, f"balance {method}: write train", "records", spark) as step:
        stats = spark.sparkContext.parallelize(classes, len(classes)) \
            .mapPartitions(class_tasks(train_uri, parts_uri, method, before, targets, size, args, batch_rows,
                                       int(cfg.get("ingest.rowgroup_size_mb")) << 20,
                                       int(cfg.get("ingest.rows_per_file")))).collect()
        step.count = sum(n for _, _, n, _ in stats)
    after = {dx: sum(n for d, _, n, _ in stats if d == dx) for dx in {d for d, _, _, _ in stats}}
    if after != targets:
        raise RuntimeError(f"balance: counts after {after} differ from targets {targets}; "
                           "the previous output was left in place")
    publish(parts_uri, staging, balanced_schema(size), {"train": {part: g for _, part, _, g in stats}})
    return after


def balance(spark, cfg: Config, run_id: str | None = None) -> dict:
    """Run the balance stage; returns its summary (also written as ``counts.json``)."""
    t_start = time.perf_counter()
    run_id = run_id or storage.new_run_id()
    name = cfg.get("dataset.name")
    method = cfg.get("balance.method")
    if method not in METHODS:
        raise ConfigError(f"balance.method must be one of {METHODS}, got {method!r}")
    layout = Layout(cfg.get("storage.root"))
    manifest = require_manifest(layout, name)
    size = int(manifest["image_size"])
    before = class_counts(layout.split(name, "train"))
    targets = class_targets(before, cfg.get("balance.target"), float(cfg.get("balance.ratio")),
                            cfg.get("balance.counts") or {})
    if method in ("weights", "none"):
        targets = dict(before)
    weights = balanced_weights({dx: before.get(dx, 0) for dx in CLASSES})
    summary = {"dataset": name, "method": method, "run_id": run_id, "image_size": size,
               "source_fingerprint": manifest["fingerprint"], "before": before, "target": targets,
               "params": {"target": cfg.get("balance.target"), "ratio": cfg.get("balance.ratio"),
                          "k_neighbors": int(cfg.get("balance.k_neighbors")),
                          "neighbor_size": cfg.get("balance.neighbor_size"), "seed": int(cfg.get("balance.seed"))},
               "class_weights": {dx: float(w) for dx, w in weights.items()}}
    log.info("balance %s/%s: before %s", name, method, before)
    out_uri = layout.balanced(name, method)
    with publishing.AtomicDir(out_uri, run_id) as staging, scratch(staging, ["train"]) as parts_uri:
        summary["after"] = before if method == "weights" else _write_train(
            spark, layout.split(name, "train"), staging, parts_uri, method, size, before, targets, cfg)
        summary["seconds"] = round(time.perf_counter() - t_start, 2)
        storage.write_json(f"{staging}/counts.json", summary)
        storage.write_json(f"{staging}/class_weights.json", summary["class_weights"])
    log.info("balance %s/%s: after %s (%.1fs) -> %s", name, method, summary["after"], summary["seconds"], out_uri)
    return summary
