"""Train (driver side): resolve data and parameters, launch Horovod workers on Spark, publish the model.

The ranks run ``lesionspark.train.executor.train_worker``. The driver writes ``models/<model>/<version>/``
(``model.keras``, ``model_card.json``, ``history.json``) atomically and points
``models/<model>/latest`` at it.
"""
from __future__ import annotations

import logging
import os
import time


from .. import __version__
from ..store import storage
from ..store.layout import Layout
from ..store import publishing
from ..dataset.clinical import ENCODING, check_fields
from ..core.classes import CLASSES, LABEL_OF, balanced_weights, binary_label
from ..core.config import Config, ConfigError
from ..dataset.writer import require_manifest
from ..modeling.models import ARCHITECTURES, PREPROCESSING
from .spec import STATE, Augment, Finetune, TrainSpec
from .executor import train_worker

log = logging.getLogger(__name__)


def row_groups(url: str) -> int:
    import pyarrow.parquet as pq
    import pyarrow.fs as pafs
    fs, path = storage.filesystem(url)
    total = 0
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.path.endswith(".parquet"):
            with fs.open_input_file(info.path) as fh:
                total += pq.ParquetFile(fh).metadata.num_row_groups
    return total


def sharding(n_row_groups: int, num_proc: int) -> str:
    """Petastorm's cur_shard/shard_count split row groups among ranks; with fewer than two row
    groups a rank, ranks instead keep rows by a stable hash of the image id."""
    return "row_groups" if n_row_groups >= 2 * num_proc else "hash"


def class_weights_from_counts(per_class: dict, binary: bool) -> dict[int, float]:
    """Keras ``class_weight`` (by output index) from per-dx counts: balanced over the model's classes."""
    by_label: dict[int, int] = {}
    for dx, n in per_class.items():
        label = binary_label(dx) if binary else LABEL_OF[dx]
        by_label[label] = by_label.get(label, 0) + n
    return {int(c): float(w) for c, w in sorted(balanced_weights(by_label).items())}


def threads_per_worker(spark, num_proc: int, configured: int) -> int:
    """Compute threads for one rank: configured, else the task's CPUs on a cluster
    (``spark.task.cpus``), else this machine's cores divided among the local ranks."""
    if configured:
        return int(configured)
    master = spark.sparkContext.master
    if master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // num_proc)
    return int(spark.conf.get("spark.task.cpus", "1"))


def training_data(cfg: Config) -> str:
    """``train.balance``, or, unset, ``balance.method``: a conf that balances with SMOTE trains on it."""
    return cfg.get("train.balance") or cfg.get("balance.method")


def _training_split(layout: Layout, name: str, manifest: dict, method: str) -> tuple[str, dict]:
    """(URL of the training data, its per-class counts) for ``train.balance``/``balance.method``."""
    if method in ("none", "weights"):
        return layout.split(name, "train"), manifest["counts"]["by_split"]["train"]["per_class"]
    if method not in ("smote", "oversample"):
        raise ConfigError(f"train.balance must be smote, oversample, weights or none, got {method!r}")
    out = publishing.resolve(layout.balanced(name, method))
    if not storage.exists(out + "/counts.json"):
        raise ConfigError(f"no {method} output for {name!r}: run `lesionspark balance --method {method}` first")
    counts = storage.read_json(out + "/counts.json")
    if counts["source_fingerprint"] != manifest["fingerprint"]:
        raise ConfigError(f"{out} was made from an older ingest of {name!r} (fingerprint differs): rerun balance")
    return out + "/train", counts["after"]


SELECT = ("best", "last", "swa")  # train.select: which weights a run keeps (docs/stages.md, "Train")


def build_spec(spark, cfg: Config, run_id: str) -> TrainSpec:
    """The run's ``TrainSpec``, from the config and the ingested (or balanced) data."""
    layout = Layout(cfg.get("storage.root"))
    name = cfg.get("dataset.name")
    manifest = require_manifest(layout, name)
    arch = cfg.get("model.arch")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch must be one of {ARCHITECTURES}, got {arch!r}")
    if cfg.get("train.select") not in SELECT:
        raise ConfigError(f"train.select must be one of {SELECT}, got {cfg.get('train.select')!r}")
    if int(cfg.get("train.swa_epochs")) < 1:
        raise ConfigError(f"train.swa_epochs must be at least 1, got {cfg.get('train.swa_epochs')!r}")
    thin = thin_val_classes(manifest)
    if cfg.get("train.select") == "best" and thin:
        log.warning("train.select: best picks the epoch by %s on a val split with %s: one image moves it by up "
                    "to %.2f, so the pick follows noise (docs/benchmarks.md, \"Which weights a run keeps\"); "
                    "train.select: %s does not depend on val", cfg.get("train.monitor"),
                    ", ".join(f"{n} {c}" for c, n in sorted(thin.items())),
                    1 / (sum(1 for n in manifest["counts"]["by_split"]["val"]["per_class"].values() if n)
                         * min(thin.values())), "last")
    method = training_data(cfg)
    train_url, train_counts = _training_split(layout, name, manifest, method)
    binary = cfg.get("train.mode") == "binary"
    num_proc = int(cfg.get("train.num_proc") or spark.sparkContext.defaultParallelism)
    n_row_groups = row_groups(train_url)
    params = dict(cfg.get("model.params") or {})
    if cfg.get("model.weights") is not None:
        params["weights"] = cfg.get("model.weights")
    try:
        metadata = check_fields(cfg.get("model.metadata"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    t = cfg.get("train")
    return TrainSpec(
        run_id=run_id, run_dir=layout.run(run_id),
        dataset=name, fingerprint=manifest["fingerprint"], balance=method,
        train_url=train_url, val_url=layout.split(name, "val"), test_url=layout.split(name, "test"),
        n_train=int(sum(train_counts.values())), train_counts=train_counts,
        image_size=int(manifest["image_size"]), resize=manifest.get("resize", "squash"),
        arch=arch, model_name=cfg.get("model.name") or arch, model_params=params, metadata=metadata,
        preprocessing=PREPROCESSING[arch],
        mode="binary" if binary else "multiclass", n_classes=2 if binary else len(CLASSES),
        label_field="malignant" if binary else "label",
        classes=["benign", "malignant"] if binary else list(CLASSES),
        class_weight=class_weights_from_counts(train_counts, binary) if method == "weights" else None,
        epochs=int(t["epochs"]), batch_size=int(t["batch_size"]), learning_rate=float(t["learning_rate"]),
        lr_scaling=t["lr_scaling"], warmup_epochs=int(t["warmup_epochs"]), schedule=t["schedule"],
        loss=t["loss"], focal_gamma=float(t["focal_gamma"]), monitor=t["monitor"], patience=int(t["patience"]),
        select=t["select"], swa_epochs=int(t["swa_epochs"]),
        augment=Augment(**t["augment"]), finetune=Finetune(**t["finetune"]), bn_batches=int(t["bn_batches"]),
        shuffle_buffer=int(t["shuffle_buffer"]), seed=int(t["seed"]),
        samples_per_epoch=int(t["samples_per_epoch"]) if t["samples_per_epoch"] else None,
        compression=t["compression"], backward_passes_per_step=int(t["backward_passes_per_step"]),
        num_proc=num_proc, threads=threads_per_worker(spark, num_proc, int(t["threads_per_worker"])),
        reader_workers=int(t["reader_workers"]), deterministic=bool(t["deterministic"]),
        sharding=sharding(n_row_groups, num_proc), row_groups=n_row_groups,
        sleep_after_epoch=float(t["sleep_after_epoch"] or 0), keep_epoch_weights=bool(t["keep_epoch_weights"]))


def train(spark, cfg: Config, run_id: str | None = None) -> dict:
    """Train with Horovod on Spark; returns the model card."""
    import horovod.spark  # deferred: Horovod loads its TensorFlow ops on import

    run_id = run_id or cfg.get("train.run_id") or storage.new_run_id()
    spec = build_spec(spark, cfg, run_id)
    log.info("train %s on %s (%s, %d rows, %d row groups, sharding by %s): %d Horovod workers x %d threads, "
             "%d epochs, run %s", spec.model_name, spec.train_url, spec.balance, spec.n_train,
             spec.row_groups, spec.sharding, spec.num_proc, spec.threads, spec.epochs, run_id)
    if storage.exists(storage.join(spec.run_dir, STATE)):
        log.info("train: resuming run %s from its last checkpoint", run_id)
    start = time.perf_counter()
    results = horovod.spark.run(train_worker, args=(spec,), num_proc=spec.num_proc,
                                verbose=int(cfg.get("train.horovod_verbose")))
    seconds = time.perf_counter() - start
    rank0 = next(r for r in results if r["rank"] == 0)
    for kind in ("trainable_sha256", "non_trainable_sha256"):
        if len({r[kind] for r in results}) != 1:
            raise RuntimeError(f"ranks finished with different {kind.split('_sha')[0]} weights: not synchronised")
    card = publish(cfg, spec, rank0, seconds, ranks=[
        {k: r[k] for k in ("rank", "initial_epoch", "epochs_run", "steps_per_epoch", "samples_per_s", "epoch_train_seconds",
                           "trainable_sha256", "non_trainable_sha256")} for r in sorted(results, key=lambda r: r["rank"])])
    log.info("train: %s/%s in %.0fs; val %s; test %s", card["name"], card["version"], seconds,
             card["metrics"]["val"], card["metrics"]["test"])
    return card


MIN_VAL_IMAGES = 30  # per present class, for a pick by a val monitor to be more than noise


def thin_val_classes(manifest: dict) -> dict:
    """The val classes with fewer than ``MIN_VAL_IMAGES`` images (and at least one): on such a split
    one image moves a balanced-accuracy monitor by 1/(classes x count)."""
    per_class = manifest["counts"]["by_split"]["val"]["per_class"]
    return {c: n for c, n in per_class.items() if 0 < n < MIN_VAL_IMAGES}


def selection(spec: TrainSpec, epochs_run: int, best: dict | None) -> dict:
    """The model card's ``selection``: the rule and the epochs (1-based) whose weights the model holds."""
    if spec.select == "best":
        return {"rule": "best", "monitor": spec.monitor, "epochs": [best["epoch"] + 1] if best else []}
    if spec.select == "last":
        return {"rule": "last", "epochs": [epochs_run]}
    return {"rule": "swa", "epochs": list(range(max(1, spec.epochs - spec.swa_epochs + 1), epochs_run + 1))}


def publish(cfg: Config, spec: TrainSpec, rank0: dict, seconds: float, ranks: list) -> dict:
    import horovod
    import pyspark
    import tensorflow as tf
    layout = Layout(cfg.get("storage.root"))
    version = spec.run_id
    model_dir = layout.model(spec.model_name, version)
    history = rank0["history"]
    card = {
        "name": spec.model_name, "version": version, "architecture": spec.arch,
        "model_params": spec.model_params, "mode": spec.mode, "classes": spec.classes,
        "metadata": list(spec.metadata), "metadata_encoding": ENCODING if spec.metadata else None,
        "image_size": spec.image_size, "resize": spec.resize, "input": "RGB uint8, squared by resize",
        "preprocessing": spec.preprocessing, "balance": spec.balance,
        "dataset": spec.dataset, "dataset_fingerprint": spec.fingerprint, "train_counts": spec.train_counts,
        "hyperparameters": spec.hyperparameters(),
        "epochs_run": len(history.get("loss", [])), "best": rank0.get("best"),
        "selection": selection(spec, len(history.get("loss", [])), rank0.get("best")), "workers": spec.num_proc,
        "threads_per_worker": spec.threads, "sharding": spec.sharding, "run_id": spec.run_id,
        "train_seconds": round(seconds, 1), "metrics": rank0["metrics"], "ranks": ranks,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"lesionspark": __version__, "tensorflow": tf.__version__, "horovod": horovod.__version__,
                     "pyspark": pyspark.__version__},
    }
    with publishing.AtomicDir(model_dir, spec.run_id) as staging:
        storage.write_bytes(f"{staging}/model.keras", storage.read_bytes(f"{spec.run_dir}/model.keras"))
        storage.write_json(f"{staging}/history.json", history)
        storage.write_json(f"{staging}/model_card.json", card)
    storage.replace_file(layout.latest(spec.model_name), version.encode())
    return card
