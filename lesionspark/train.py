"""Train (driver side): resolve data and parameters, launch Horovod workers on Spark, publish the model.

The ranks run ``lesionspark.worker.train_worker``. The driver writes ``models/<model>/<version>/``
(``model.keras``, ``model_card.json``, ``history.json``) atomically and points
``models/<model>/latest`` at it.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from . import __version__, storage
from .classes import CLASSES, LABEL_OF
from .config import Config, ConfigError
from .models import ARCHITECTURES, PREPROCESSING

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
    from sklearn.utils.class_weight import compute_class_weight
    from .classes import binary_label
    labels, counts = [], []
    for dx, n in per_class.items():
        if n:
            labels.append(binary_label(dx) if binary else LABEL_OF[dx])
            counts.append(n)
    y = np.repeat(labels, counts)
    classes = np.unique(y)
    return {int(c): float(w) for c, w in zip(classes, compute_class_weight("balanced", classes=classes, y=y))}


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


def build_spec(spark, cfg: Config, run_id: str) -> dict:
    layout = storage.Layout(cfg.get("storage.root"))
    name = cfg.get("dataset.name")
    if not storage.exists(layout.manifest(name)):
        raise ConfigError(f"no ingested dataset {name!r} under {layout.root}: run `lesionspark ingest` first")
    manifest = storage.read_json(layout.manifest(name))
    arch = cfg.get("model.arch")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch must be one of {ARCHITECTURES}, got {arch!r}")
    method = training_data(cfg)
    train_counts = manifest["counts"]["by_split"]["train"]["per_class"]
    if method in ("smote", "oversample"):
        out = layout.balanced(name, method)
        if not storage.exists(out + "/counts.json"):
            raise ConfigError(f"no {method} output for {name!r}: run `lesionspark balance --method {method}` first")
        counts = storage.read_json(out + "/counts.json")
        if counts["source_fingerprint"] != manifest["fingerprint"]:
            raise ConfigError(f"{out} was made from an older ingest of {name!r} (fingerprint differs): rerun balance")
        train_url, train_counts = out + "/train", counts["after"]
    elif method in ("none", "weights"):
        train_url = layout.split(name, "train")
    else:
        raise ConfigError(f"train.balance must be smote, oversample, weights or none, got {method!r}")
    binary = cfg.get("train.mode") == "binary"
    num_proc = int(cfg.get("train.num_proc") or spark.sparkContext.defaultParallelism)
    n_row_groups = row_groups(train_url)
    params = dict(cfg.get("model.params", {}) or {})
    if cfg.get("model.weights", None) is not None:
        params["weights"] = cfg.get("model.weights")
    return {
        "run_id": run_id, "run_dir": storage.join(layout.root, "runs", run_id),
        "dataset": name, "fingerprint": manifest["fingerprint"], "balance": method,
        "train_url": train_url, "val_url": layout.split(name, "val"), "test_url": layout.split(name, "test"),
        "n_train": int(sum(train_counts.values())), "train_counts": train_counts,
        "image_size": int(manifest["image_size"]), "resize": manifest.get("resize", "squash"),
        "arch": arch, "model_name": cfg.get("model.name") or arch, "model_params": params,
        "preprocessing": PREPROCESSING[arch],
        "mode": "binary" if binary else "multiclass", "n_classes": 2 if binary else len(CLASSES),
        "label_field": "malignant" if binary else "label",
        "classes": ["benign", "malignant"] if binary else list(CLASSES),
        "class_weight": class_weights_from_counts(train_counts, binary) if method == "weights" else None,
        "epochs": int(cfg.get("train.epochs")), "batch_size": int(cfg.get("train.batch_size")),
        "learning_rate": float(cfg.get("train.learning_rate")),
        "lr_scaling": cfg.get("train.lr_scaling"), "warmup_epochs": int(cfg.get("train.warmup_epochs")),
        "loss": cfg.get("train.loss"), "focal_gamma": float(cfg.get("train.focal_gamma")),
        "monitor": cfg.get("train.monitor"), "patience": int(cfg.get("train.patience")),
        "augment": cfg.get("train.augment"), "reader_workers": int(cfg.get("train.reader_workers")),
        "deterministic": bool(cfg.get("train.deterministic")),
        "bn_batches": int(cfg.get("train.bn_batches")), "schedule": cfg.get("train.schedule"),
        "finetune": cfg.get("train.finetune"),
        "shuffle_buffer": int(cfg.get("train.shuffle_buffer")), "seed": int(cfg.get("train.seed")),
        "num_proc": num_proc, "threads": threads_per_worker(spark, num_proc, int(cfg.get("train.threads_per_worker"))),
        "sharding": sharding(n_row_groups, num_proc), "row_groups": n_row_groups,
        "sleep_after_epoch": cfg.get("train.sleep_after_epoch"),
        "samples_per_epoch": cfg.get("train.samples_per_epoch", None),
        "compression": cfg.get("train.compression"),
        "backward_passes_per_step": int(cfg.get("train.backward_passes_per_step")),
    }


def train(spark, cfg: Config, run_id: str | None = None) -> dict:
    """Train with Horovod on Spark; returns the model card."""
    import horovod.spark
    from .worker import train_worker

    run_id = run_id or cfg.get("train.run_id", None) or storage.new_run_id()
    spec = build_spec(spark, cfg, run_id)
    log.info("train %s on %s (%s, %d rows, %d row groups, sharding by %s): %d Horovod workers x %d threads, "
             "%d epochs, run %s", spec["model_name"], spec["train_url"], spec["balance"], spec["n_train"],
             spec["row_groups"], spec["sharding"], spec["num_proc"], spec["threads"], spec["epochs"], run_id)
    if storage.exists(storage.join(spec["run_dir"], "state.json")):
        log.info("train: resuming run %s from its last checkpoint", run_id)
    start = time.perf_counter()
    results = horovod.spark.run(train_worker, args=(spec,), num_proc=spec["num_proc"],
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


def publish(cfg: Config, spec: dict, rank0: dict, seconds: float, ranks: list) -> dict:
    import horovod
    import pyspark
    import tensorflow as tf
    layout = storage.Layout(cfg.get("storage.root"))
    version = spec["run_id"]
    model_dir = storage.join(layout.root, "models", spec["model_name"], version)
    history = rank0["history"]
    card = {
        "name": spec["model_name"], "version": version, "architecture": spec["arch"],
        "model_params": spec["model_params"], "mode": spec["mode"], "classes": spec["classes"],
        "image_size": spec["image_size"], "resize": spec["resize"], "input": "RGB uint8, squared by resize",
        "preprocessing": spec["preprocessing"], "balance": spec["balance"],
        "dataset": spec["dataset"], "dataset_fingerprint": spec["fingerprint"], "train_counts": spec["train_counts"],
        "hyperparameters": {k: spec[k] for k in ("epochs", "batch_size", "learning_rate", "warmup_epochs", "loss",
                                                  "focal_gamma", "monitor", "patience", "augment", "seed",
                                                  "lr_scaling", "schedule", "bn_batches",
                                                  "class_weight", "compression", "backward_passes_per_step")},
        "epochs_run": len(history.get("loss", [])), "best": rank0.get("best"), "workers": spec["num_proc"],
        "threads_per_worker": spec["threads"], "sharding": spec["sharding"], "run_id": spec["run_id"],
        "train_seconds": round(seconds, 1), "metrics": rank0["metrics"], "ranks": ranks,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {"lesionspark": __version__, "tensorflow": tf.__version__, "horovod": horovod.__version__,
                     "pyspark": pyspark.__version__},
    }
    with storage.AtomicDir(model_dir, spec["run_id"]) as staging:
        storage.write_bytes(f"{staging}/model.keras", storage.read_bytes(f"{spec['run_dir']}/model.keras"))
        storage.write_json(f"{staging}/history.json", history)
        storage.write_json(f"{staging}/model_card.json", card)
    storage.write_bytes(storage.join(layout.root, "models", spec["model_name"], "latest"), version.encode())
    return card
