"""Balance the training split: ``smote`` | ``oversample`` | ``weights`` | ``none``.

Driver: per-class counts (seven numbers), targets, the plan. Executors: one Spark task per class
reads that class's training rows with pyarrow, adds its new rows (decoding only classes below their
target; the others pass through undecoded) and writes them all into Petastorm parts itself
(``parts``): no image byte passes through the JVM, and the dataset is never collected. Validation
and test splits are never read.
"""
from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from . import storage
from .classes import CLASSES, LABEL_OF, balanced_weights
from .config import Config, ConfigError
from .dataset import require_manifest
from .images import sha256_hex
from .parts import PartWriter, publish, scratch
from .progress import timed
from .schema import FIELD_NAMES, encode_image, lesion_schema

log = logging.getLogger(__name__)

METHODS = ("smote", "oversample", "weights", "none")
BALANCED_FIELDS = list(FIELD_NAMES) + ["synthetic", "parents"]


@lru_cache(maxsize=None)
def balanced_schema(size: int):
    """The lesion Unischema plus ``synthetic`` (bool) and ``parents`` (comma-separated image ids:
    parent and neighbour for SMOTE, the copied image for oversampling, empty for originals)."""
    from petastorm.codecs import ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import BooleanType, StringType
    base = lesion_schema(size)
    return Unischema(f"BalancedLesionRecord{size}", list(base.fields.values()) + [
        UnischemaField("synthetic", np.bool_, (), ScalarCodec(BooleanType()), False),
        UnischemaField("parents", np.str_, (), ScalarCodec(StringType()), False)])


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


def synthesize_group(pdf: pd.DataFrame, method: str, targets: Mapping[str, int], size: int, k: int,
                     seed: int, neighbor_size: int | None, chunk_rows: int, synth_chunk_rows: int) -> pd.DataFrame:
    """New rows for one class (all of its training rows in ``pdf``). Runs in an executor, one class
    per task (``class_records``)."""
    pdf = pdf.sort_values("image_id").reset_index(drop=True)  # order-independent of the shuffle
    dx = pdf["dx"].iloc[0]
    n_new = targets[dx] - len(pdf)
    schema = lesion_schema(size)
    field = schema.fields["image"]
    class_seed = seed * 1000 + LABEL_OF[dx]
    how = method
    if method == "smote":
        from .smote import effective_k, smote_class
        k_eff = effective_k(len(pdf), k)
        if k_eff < 1:
            how = "oversample"
            log.warning("balance: class %s has %d sample(s), too few for SMOTE: oversampling it", dx, len(pdf))
        elif k_eff < k:
            log.warning("balance: class %s has %d samples: SMOTE with k=%d instead of %d", dx, len(pdf), k_eff, k)
    if how == "smote":
        images = np.stack([field.codec.decode(field, b) for b in pdf["image"]])
        new, parent, neighbour, steps = smote_class(images, n_new, k, class_seed, neighbor_size, chunk_rows,
                                                synth_chunk_rows)
        pairs = [(pdf["image_id"][p], pdf["image_id"][q]) for p, q in zip(parent, neighbour)]
        encoded = [encode_image(schema, im) for im in new]
        sources = [f"smote:{a}+{b}@{st:.6f}" for (a, b), st in zip(pairs, steps)]
        parents = [f"{a},{b}" for a, b in pairs]
        lesions = [pdf["lesion_id"][p] for p in parent]
        clinical = inherited_metadata(pdf, parent, neighbour, steps)
    else:  # oversample: copies of rows drawn with replacement
        pick = np.random.default_rng(class_seed).integers(0, len(pdf), n_new)
        encoded = [bytes(pdf["image"][i]) for i in pick]
        sources = [f"oversample:{pdf['image_id'][i]}" for i in pick]
        parents = [pdf["image_id"][i] for i in pick]
        lesions = [pdf["lesion_id"][i] for i in pick]
        clinical = inherited_metadata(pdf, pick, pick, np.zeros(len(pick)))
    return pd.DataFrame({
        "image_id": [f"{how}-{dx}-{seed}-{i:06d}" for i in range(n_new)],
        "lesion_id": lesions, "dx": dx, "label": LABEL_OF[dx], "malignant": int(pdf["malignant"].iloc[0]),
        "image": encoded, "dx_type": how, **clinical,
        "sha256": [sha256_hex(b) for b in encoded], "source": sources, "synthetic": True, "parents": parents,
    })[BALANCED_FIELDS]


def inherited_metadata(pdf: pd.DataFrame, parent, neighbour, steps) -> dict:
    """Age, sex and site of new rows, as SMOTE-NC does for mixed features: the age interpolated like
    the image (parent + step x (neighbour - parent); the parent's where either is unknown), sex and
    site the parent's. A copy (oversampling: neighbour = parent, step 0) keeps its row's values. So a
    model with metadata inputs never learns "metadata missing" as a sign of a minority class."""
    age = pdf["age"].to_numpy(dtype=np.float64)
    a, b = age[np.asarray(parent, int)], age[np.asarray(neighbour, int)]
    mixed = a + np.asarray(steps, np.float64) * (b - a)
    return {"age": np.where(np.isnan(mixed), a, mixed).astype(np.float32),
            "sex": pdf["sex"].to_numpy()[np.asarray(parent, int)],
            "localization": pdf["localization"].to_numpy()[np.asarray(parent, int)]}


def class_counts(train_uri: str) -> dict[str, int]:
    """Rows per class of the training split, from its ``dx`` column alone (read on the driver with
    pyarrow: a few bytes a row, no Spark job)."""
    return storage.value_counts(train_uri, "dx")


def read_class(train_uri: str, dx: str, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The training split's records of class ``dx``, read with pyarrow in batches (no Spark)."""
    import pyarrow.compute as pc
    for batch in storage.parquet_dataset(train_uri).to_batches(columns=list(FIELD_NAMES), filter=pc.field("dx") == dx,
                                                               batch_size=batch_rows):
        if batch.num_rows:
            yield batch.to_pandas()


def class_records(dx: str, train_uri: str, method: str, before: Mapping[str, int], targets: Mapping[str, int],
                  size: int, args: tuple, batch_rows: int) -> Iterator[pd.DataFrame]:
    """One class's balanced records: its training rows as they are, then (below its target) the new
    ones. A class at its target is streamed batch by batch and never decoded. Runs in an executor."""
    originals = dict(synthetic=False, parents="")
    if targets[dx] <= before[dx]:
        for pdf in read_class(train_uri, dx, batch_rows):
            yield pdf.assign(**originals)
        return
    pdf = pd.concat(list(read_class(train_uri, dx, batch_rows)), ignore_index=True)
    yield pdf.assign(**originals)
    yield synthesize_group(pdf, method, targets, size, *args)


def _class_tasks(train_uri: str, parts_uri: str, method: str, before: dict, targets: dict, size: int, cfg: Config):
    """``mapPartitions`` function over class names (one class per task): each task writes its class's
    originals and new rows into Petastorm parts itself and returns, per part it wrote, ``(dx, part,
    rows, row groups)``. A job's result holds only successful attempts' returns, so these name
    exactly the parts to publish."""
    args = (int(cfg.get("balance.k_neighbors")), int(cfg.get("balance.seed")), cfg.get("balance.neighbor_size"),
            int(cfg.get("balance.chunk_rows")), int(cfg.get("balance.synth_chunk_rows")))
    batch_rows = int(cfg.get("balance.chunk_rows"))
    schema, rowgroup, per_file = balanced_schema(size), int(cfg.get("ingest.rowgroup_size_mb")) << 20, \
        int(cfg.get("ingest.rows_per_file"))

    def run(classes: Iterator[str]) -> Iterator[tuple]:
        rows, groups = {}, {}
        with PartWriter(parts_uri, schema, rowgroup, per_file) as writer:
            for dx in classes:
                for records in class_records(dx, train_uri, method, before, targets, size, args, batch_rows):
                    for part, group in zip(*writer.add("train", records)):
                        rows[(dx, part)] = rows.get((dx, part), 0) + 1
                        groups[part] = max(groups.get(part, 0), group + 1)
        return [(dx, part, n, groups[part]) for (dx, part), n in rows.items()]
    return run


def _write_train(spark, train_uri: str, staging: str, parts_uri: str, method: str, size: int, before: dict,
                 targets: dict, cfg: Config) -> dict:
    """The balanced training split as Petastorm at ``<staging>/train``, written by one task per class
    (largest job first) into parts under ``parts_uri``; its per-class counts, which must equal the targets."""
    grow = {dx: targets[dx] - before[dx] for dx in before if targets[dx] > before[dx]}
    if grow:
        log.info("balance: adding %s", grow)
    classes = sorted(before, key=lambda dx: (-grow.get(dx, 0), -before[dx], dx))
    with timed(log, f"balance {method}: write train", "records", spark) as step:
        stats = spark.sparkContext.parallelize(classes, len(classes)) \
            .mapPartitions(_class_tasks(train_uri, parts_uri, method, before, targets, size, cfg)).collect()
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
    layout = storage.Layout(cfg.get("storage.root"))
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
    with storage.AtomicDir(out_uri, run_id) as staging, scratch(staging, ["train"]) as parts_uri:
        summary["after"] = before if method == "weights" else _write_train(
            spark, layout.split(name, "train"), staging, parts_uri, method, size, before, targets, cfg)
        summary["seconds"] = round(time.perf_counter() - t_start, 2)
        storage.write_json(f"{staging}/counts.json", summary)
        storage.write_json(f"{staging}/class_weights.json", summary["class_weights"])
    log.info("balance %s/%s: after %s (%.1fs) -> %s", name, method, summary["after"], summary["seconds"], out_uri)
    return summary
