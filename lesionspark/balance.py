"""Balance the training split: ``smote`` | ``oversample`` | ``weights`` | ``none``.

Driver: per-class counts (seven numbers), targets, the plan. Executors: one Spark task per class
that needs rows (``groupBy(label).applyInPandas``), decoding only that class's images; classes at
or above their target pass through without being decoded. The dataset is never collected.
Validation and test splits are never read.
"""
from __future__ import annotations

import logging
import time
from functools import lru_cache
from typing import Mapping

import numpy as np
import pandas as pd

from . import storage
from .classes import CLASSES, LABEL_OF, balanced_weights
from .config import Config, ConfigError
from .dataset import petastorm_write, require_manifest
from .images import sha256_hex
from .progress import timed
from .schema import FIELD_NAMES, encode_image, lesion_schema, record_struct

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


def _output_schema():
    """A balanced training record: the lesion record, whether it is synthetic, and its parents."""
    from pyspark.sql.types import BooleanType, StringType
    return record_struct({"synthetic": BooleanType(), "parents": StringType()}, all_nullable=False)


def synthesize_group(pdf: pd.DataFrame, method: str, targets: Mapping[str, int], size: int, k: int,
                     seed: int, neighbor_size: int | None, chunk_rows: int, synth_chunk_rows: int) -> pd.DataFrame:
    """New rows for one class (all of its training rows in ``pdf``). Runs in an executor.

    The caller range-partitions by label first: one class per task, never two classes hashed
    into one task while another task idles."""
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


def _balanced_rows(train, method: str, before: dict, targets: dict, size: int, cfg: Config):
    """The originals plus, for every class below its target, synthetic (SMOTE) or repeated rows,
    made per class in one Spark task each."""
    from pyspark.sql import functions as F
    out = train.select(*FIELD_NAMES).withColumn("synthetic", F.lit(False)).withColumn("parents", F.lit(""))
    grow = {dx: n for dx, n in targets.items() if n > before[dx]}
    if not grow:
        return out
    log.info("balance: adding %s", {dx: targets[dx] - before[dx] for dx in grow})
    args = (method, targets, size, int(cfg.get("balance.k_neighbors")), int(cfg.get("balance.seed")),
            cfg.get("balance.neighbor_size"), int(cfg.get("balance.chunk_rows")), int(cfg.get("balance.synth_chunk_rows")))
    new = train.filter(F.col("dx").isin(list(grow))).select(*FIELD_NAMES) \
        .repartitionByRange(len(grow), "label") \
        .groupBy("label").applyInPandas(lambda pdf: synthesize_group(pdf, *args), _output_schema())
    return out.unionByName(new)


def _write_train(spark, rows, out: str, method: str, size: int, targets: dict, cfg: Config) -> dict:
    """The balanced training split as Petastorm at ``out``; its per-class counts, which must equal the targets."""
    n_total = sum(targets.values())
    with timed(log, f"balance {method}: write train", "records") as step:
        petastorm_write(spark, rows.select(*BALANCED_FIELDS), out, size, int(cfg.get("ingest.rowgroup_size_mb")),
                        -(-n_total // int(cfg.get("ingest.rows_per_file"))), balanced_schema(size))
        after = {r["dx"]: r["count"] for r in spark.read.parquet(out).groupBy("dx").count().collect()}
        step.count = sum(after.values())
    if after != targets:
        raise RuntimeError(f"balance: counts after {after} differ from targets {targets}; "
                           "the previous output was left in place")
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
    train = spark.read.parquet(layout.split(name, "train"))
    before = {r["dx"]: r["count"] for r in train.groupBy("dx").count().collect()}
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
    with storage.AtomicDir(out_uri, run_id) as staging:
        summary["after"] = before if method == "weights" else _write_train(
            spark, _balanced_rows(train, method, before, targets, size, cfg), f"{staging}/train", method, size,
            targets, cfg)
        summary["seconds"] = round(time.perf_counter() - t_start, 2)
        storage.write_json(f"{staging}/counts.json", summary)
        storage.write_json(f"{staging}/class_weights.json", summary["class_weights"])
    log.info("balance %s/%s: after %s (%.1fs) -> %s", name, method, summary["after"], summary["seconds"], out_uri)
    return summary
