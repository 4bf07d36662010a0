"""What each Horovod rank runs (the driver side is ``lesionspark.train``).

``train_worker(spec)`` is shipped by ``horovod.spark.run`` to N Spark tasks. Each rank sets its
thread budget before TensorFlow starts, reads its shard of the Petastorm training data, trains
with ``hvd.DistributedOptimizer`` (learning rate scaled by N, warm-up), starts from rank 0's
weights, averages metrics across ranks, and validates on the whole val split each epoch. Rank 0
checkpoints every epoch under ``runs/<run_id>/`` and a rank that finds a checkpoint resumes from it.
``spec`` is plain data (see ``lesionspark.train.build_spec``).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zlib

import numpy as np

CHECKPOINT = "checkpoint-weights.h5"  # weights only (HDF5 arrays): resuming runs no code from the root
BEST = "best_weights.h5"
STATE = "state.json"


def _limit_threads(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def scaled_learning_rate(lr: float, workers: int, rule: str) -> float:
    """The learning rate for ``workers`` data-parallel ranks: ``linear`` (x N, Goyal et al., for
    SGD), ``sqrt`` (x sqrt N, the usual rule for Adam) or ``none``."""
    factor = {"linear": workers, "sqrt": workers ** 0.5, "none": 1}.get(rule)
    if factor is None:
        raise ValueError(f"train.lr_scaling must be linear, sqrt or none, got {rule!r}")
    return lr * factor


def cosine_rate(peak: float, epoch: int, warmup: int, epochs: int) -> float:
    """Cosine decay from ``peak`` after warm-up to near zero at the last epoch (per epoch)."""
    import math
    span = max(1, epochs - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(span, epoch - warmup) / span)) + 1e-6


def _gpu_setup(hvd) -> None:
    """One GPU per rank (by local rank), memory growth on; no-op without GPUs."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")


def macro_recall_metric(n_classes: int):
    import tensorflow as tf

    class MacroRecall(tf.keras.metrics.Metric):
        """Mean per-class recall (= balanced accuracy) over classes present in the labels."""

        def __init__(self, n_classes=n_classes, name="macro_recall", **kw):
            super().__init__(name=name, **kw)
            self.n_classes = n_classes
            self.cm = self.add_weight("cm", shape=(n_classes, n_classes), initializer="zeros", dtype=tf.float32)

        def update_state(self, y_true, y_pred, sample_weight=None):
            t = tf.argmax(y_true, axis=-1)
            p = tf.argmax(y_pred, axis=-1)
            self.cm.assign_add(tf.math.confusion_matrix(t, p, self.n_classes, dtype=tf.float32))

        def result(self):
            support = tf.reduce_sum(self.cm, axis=1)
            recall = tf.math.divide_no_nan(tf.linalg.diag_part(self.cm), support)
            present = tf.cast(support > 0, tf.float32)
            return tf.math.divide_no_nan(tf.reduce_sum(recall * present), tf.reduce_sum(present))

        def reset_state(self):
            self.cm.assign(tf.zeros_like(self.cm))

        def get_config(self):
            return {"n_classes": self.n_classes, "name": self.name}

    return MacroRecall


def _all_layers(model):
    """Every layer, nested models' layers included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out += _all_layers(layer)
    return out


def _load_split(url: str, label_field: str, workers: int = 2):
    """A whole (small) split as uint8 images and integer labels: for validation and test. ``workers``
    1 reads row groups in file order (deterministic training)."""
    from petastorm import make_reader
    images, labels = [], []
    with make_reader(url, schema_fields=["image", label_field], num_epochs=1, workers_count=workers,
                     shuffle_row_groups=False, reader_pool_type="thread") as reader:
        for row in reader:
            images.append(row.image)
            labels.append(int(getattr(row, label_field)))
    return np.stack(images), np.array(labels)


def _train_dataset(spec, rank: int, size: int):
    import tensorflow as tf
    from petastorm import make_reader
    from petastorm.predicates import in_lambda
    from petastorm.tf_utils import make_petastorm_dataset
    from .augment import augment_batch
    from .models import preprocess

    label_field = spec["label_field"]
    fields = ["image", label_field]
    # Petastorm decodes the PNGs in its thread pool (OpenCV releases the GIL): in parallel with
    # each other and with the training step.
    # deterministic: one decoding thread, so that rows arrive in the seeded order, not completion order
    threads = 1 if spec.get("deterministic") else int(spec.get("reader_workers") or 2)
    kw = dict(num_epochs=None, shuffle_row_groups=True, seed=spec["seed"] + rank,
              workers_count=threads, reader_pool_type="thread")
    if spec["sharding"] == "row_groups":
        kw.update(cur_shard=rank, shard_count=size)
    else:  # fewer row groups than ranks: shard rows by a stable hash of the image id
        fields.append("image_id")  # petastorm reads predicate fields as part of the schema
        kw["predicate"] = in_lambda(["image_id"], lambda image_id: zlib.crc32(str(image_id).encode()) % size == rank)
    reader = make_reader(spec["train_url"], schema_fields=fields, **kw)
    n_classes = spec["n_classes"]
    ds = make_petastorm_dataset(reader)
    ds = ds.map(lambda r: (r.image, tf.cast(getattr(r, label_field), tf.int32)))
    ds = ds.shuffle(spec["shuffle_buffer"], seed=spec["seed"] + rank).batch(spec["batch_size"])
    aug = spec["augment"]
    rng = tf.random.Generator.from_seed(spec["seed"] * 1000 + rank)

    def to_model(x, y):  # whole batches from here on: one op per batch, not per image
        x = tf.cast(x, tf.float32)
        if aug.get("enabled"):
            x = augment_batch(x, rng, float(aug.get("rotation", 0)), float(aug.get("contrast", 0)),
                              float(aug.get("brightness", 0)))
        return preprocess(spec["preprocessing"], x), tf.one_hot(y, n_classes)

    ds = ds.map(to_model, num_parallel_calls=1)
    return reader, ds.prefetch(tf.data.AUTOTUNE)


def _download(uri: str) -> str:
    from . import storage
    fd, path = tempfile.mkstemp(suffix=os.path.splitext(uri)[1])
    with os.fdopen(fd, "wb") as fh:
        fh.write(storage.read_bytes(uri))
    return path


def _upload(local: str, uri: str) -> None:
    from . import storage
    with open(local, "rb") as fh:
        storage.write_bytes(uri + ".tmp", fh.read())
    fs, path = storage.filesystem(uri)
    fs.move(path + ".tmp", path)  # a reader never sees a half-written checkpoint


def train_worker(spec: dict) -> dict:
    _limit_threads(int(spec["threads"]))
    from .progress import quiet_library_warnings
    quiet_library_warnings()  # on every row group read, burying the epoch progress
    import tensorflow as tf
    import horovod.tensorflow.keras as hvd
    from . import storage
    from .models import build, from_scratch, preprocess, unfreeze_top

    hvd.init()
    _gpu_setup(hvd)
    rank, size = hvd.rank(), hvd.size()
    tf.keras.utils.set_random_seed(spec["seed"])
    if spec.get("deterministic"):  # same seed, same data and ranks: bit-identical weights (docs/benchmarks.md)
        tf.config.experimental.enable_op_determinism()
    n_classes, label_field = spec["n_classes"], spec["label_field"]
    run_dir = spec["run_dir"]
    MacroRecall = macro_recall_metric(n_classes)

    lr = scaled_learning_rate(spec["learning_rate"], size, spec["lr_scaling"])
    if spec["loss"] == "focal":
        loss = tf.keras.losses.CategoricalFocalCrossentropy(gamma=float(spec["focal_gamma"]))
    else:
        loss = tf.keras.losses.CategoricalCrossentropy()
    state = storage.read_json(f"{run_dir}/{STATE}") if storage.exists(f"{run_dir}/{STATE}") else None

    def compile_(model, rate):
        opt = hvd.DistributedOptimizer(
            tf.keras.optimizers.Adam(rate),
            compression=hvd.Compression.fp16 if spec.get("compression") == "fp16" else hvd.Compression.none,
            backward_passes_per_step=int(spec.get("backward_passes_per_step", 1)),
            average_aggregated_gradients=True)
        model.compile(optimizer=opt, loss=loss, metrics=["accuracy", MacroRecall()])

    pretrained_finetune = spec["arch"] == "resnet50" and spec["model_params"].get("mode") == "finetune" \
        and not from_scratch("finetune", spec["model_params"].get("weights"))
    if state is not None:  # resume: every rank rebuilds the model from the spec and loads the same weights
        local = _download(f"{run_dir}/{CHECKPOINT}")
        model = build(spec["arch"], spec["image_size"], n_classes, spec["model_params"])
        if pretrained_finetune:
            unfreeze_top(model, int(spec["finetune"]["blocks"]))  # the checkpoint was taken after the warm-up
        model.load_weights(local)  # arrays only: an HDF5 full-model load would deserialise layer code
        os.remove(local)
        compile_(model, float(state["learning_rate"]))
        initial_epoch = int(state["epoch"])
    else:
        model = build(spec["arch"], spec["image_size"], n_classes, spec["model_params"])
        compile_(model, lr)
        initial_epoch = 0

    reader, train_ds = _train_dataset(spec, rank, size)
    x_val, y_val = _load_split(spec["val_url"], label_field, 1 if spec.get("deterministic") else 2)
    val_ds = tf.data.Dataset.from_tensor_slices((x_val.astype(np.float32), tf.one_hot(y_val, n_classes))) \
        .batch(spec["batch_size"]).map(lambda x, y: (preprocess(spec["preprocessing"], x), y))
    per_epoch = int(spec.get("samples_per_epoch") or spec["n_train"])  # a fixed budget, or one pass
    steps = max(1, -(-per_epoch // (spec["batch_size"] * size)))
    monitor = spec["monitor"]
    history = dict(state["history"]) if state else {}
    best = state.get("best") if state else None
    epochs_run = 0

    class Checkpoint(tf.keras.callbacks.Callback):
        """Rank 0: model + optimizer every epoch, best weights when the monitor improves."""

        def on_epoch_end(self, epoch, logs=None):
            nonlocal best, epochs_run
            epochs_run += 1
            logs = dict(logs or {})
            for k, v in logs.items():
                history.setdefault(k, []).append(float(v))
            history.setdefault("epoch", []).append(epoch)
            improved = best is None or logs.get(monitor, -np.inf) > best["value"]
            if rank != 0:
                if improved:
                    best = {"value": float(logs.get(monitor, 0.0)), "epoch": epoch}
                return
            with tempfile.TemporaryDirectory() as tmp:
                if improved:
                    best = {"value": float(logs.get(monitor, 0.0)), "epoch": epoch}
                    self.model.save_weights(f"{tmp}/best_weights.h5")
                    _upload(f"{tmp}/best_weights.h5", f"{run_dir}/{BEST}")
                self.model.save_weights(f"{tmp}/{CHECKPOINT}")
                _upload(f"{tmp}/{CHECKPOINT}", f"{run_dir}/{CHECKPOINT}")
            storage.write_json(f"{run_dir}/{STATE}", {
                "epoch": epoch + 1, "history": history, "best": best,
                "learning_rate": float(tf.keras.backend.get_value(self.model.optimizer.learning_rate)),
                "wait": early.wait})
            if spec.get("sleep_after_epoch"):
                time.sleep(float(spec["sleep_after_epoch"]))  # lets tests kill a run mid-way

    class PreciseBatchNorm(tf.keras.callbacks.Callback):
        """Before each validation, replace the batch-norm moving statistics by the exact mean of the
        batch statistics of ``bn_batches`` training batches under the current weights (PreciseBN,
        Wu & Johnson 2021). A moving average of the last ~1/(1-momentum) batches, taken while the
        weights move fast, is what validation and the saved model otherwise use: with momentum 0.99
        and 200 steps it never settles (constant outputs); with 0.9 it swings from epoch to epoch."""

        def __init__(self, batches: int):
            super().__init__()
            self.batches = batches
            self.layers = [l for l in _all_layers(model) if isinstance(l, tf.keras.layers.BatchNormalization)]
            self.sample = None  # a fixed sample of training batches (as training sees them), taken once

        def recompute(self):
            if not self.layers or not self.batches:
                return
            if self.sample is None:  # from a reader of its own: taking it from train_ds would race its prefetch
                sample_reader, sample_ds = _train_dataset(spec, rank, size)
                try:
                    self.sample = [x for x, _ in sample_ds.take(self.batches)]
                finally:
                    sample_reader.stop()
                    sample_reader.join()
            momenta = [l.momentum for l in self.layers]
            for i, x in enumerate(self.sample, 1):
                for l in self.layers:  # moving = mean of the i batch statistics so far
                    l.momentum = 1.0 - 1.0 / i
                self.model(x, training=True)
            for l, m in zip(self.layers, momenta):
                l.momentum = m

        def on_test_begin(self, logs=None):
            self.recompute()

        def on_train_end(self, logs=None):
            self.recompute()

    class SyncNonTrainable(tf.keras.callbacks.Callback):
        """Average batch-norm moving statistics across ranks before each validation and at the
        end, so every rank validates (and rank 0 saves) the same model that the averaged
        validation metric describes. Gradients are allreduced by the optimizer; these are not."""

        def _sync(self):
            for i, v in enumerate(self.model.non_trainable_variables):
                if v.dtype.is_floating:
                    v.assign(hvd.allreduce(v, op=hvd.Average, name=f"sync_non_trainable_{i}"))

        def on_test_begin(self, logs=None):
            self._sync()

        def on_train_end(self, logs=None):
            self._sync()

    class TrainClock(tf.keras.callbacks.Callback):
        """Seconds spent in training steps per epoch (validation excluded), for throughput."""

        def __init__(self):
            super().__init__()
            self.epochs, self._t = [], None

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_test_begin(self, logs=None):
            if self._t is not None:
                self.epochs.append(time.perf_counter() - self._t)
                self._t = None

    clock = TrainClock()

    class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state is not None and best is not None:
                self.best, self.wait = best["value"], int(state.get("wait", 0))

    early = ResumableEarlyStopping(monitor=monitor, mode="max", patience=int(spec["patience"]))
    callbacks = [
        clock,  # first: its epoch ends where validation (and the batch-norm pass before it) begins
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        PreciseBatchNorm(int(spec["bn_batches"])),  # then averaged across ranks by SyncNonTrainable
        SyncNonTrainable(),
        hvd.callbacks.MetricAverageCallback(),
    ]
    if initial_epoch < spec["warmup_epochs"]:
        callbacks.append(hvd.callbacks.LearningRateWarmupCallback(
            initial_lr=lr, warmup_epochs=spec["warmup_epochs"], steps_per_epoch=steps, verbose=0))
    if spec["schedule"] == "cosine":
        callbacks.append(tf.keras.callbacks.LearningRateScheduler(
            lambda epoch, current: cosine_rate(lr, epoch, int(spec["warmup_epochs"]), int(spec["epochs"]))
            if epoch >= int(spec["warmup_epochs"]) else current))
    else:
        callbacks.append(tf.keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.5,
                                                              patience=max(1, int(spec["patience"]) // 2), min_lr=1e-6))
    callbacks += [early, Checkpoint()]
    fine = spec["finetune"]
    start = time.perf_counter()
    if pretrained_finetune and initial_epoch == 0:
        # Warm-up of the head with the backbone frozen, then the top blocks at a lower rate.
        model.fit(train_ds, steps_per_epoch=steps, epochs=int(fine["head_epochs"]), verbose=0,
                  callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)], class_weight=spec["class_weight"])
        unfreeze_top(model, int(fine["blocks"]))
        compile_(model, lr * float(fine["lr_factor"]))
    if initial_epoch < spec["epochs"]:
        model.fit(train_ds, steps_per_epoch=steps, epochs=spec["epochs"], initial_epoch=initial_epoch,
                  validation_data=val_ds, class_weight=spec["class_weight"], callbacks=callbacks,
                  verbose=2 if rank == 0 else 0)
    seconds = time.perf_counter() - start
    reader.stop()
    reader.join()
    digest = lambda ws: hashlib.sha256(b"".join(w.numpy().tobytes() for w in ws)).hexdigest()
    result = {"rank": rank, "size": size, "initial_epoch": initial_epoch, "epochs_run": epochs_run,
              "history": history, "seconds": seconds, "steps_per_epoch": steps,
              # Trainable weights are synchronised by the optimizer's allreduce; batch-norm moving
              # statistics by SyncNonTrainable. Both must be identical on every rank.
              "trainable_sha256": digest(model.trainable_weights),
              "non_trainable_sha256": digest(model.non_trainable_weights),
              # steady state: epochs after the first (graph tracing), training steps only, all ranks
              "samples_per_s": (steps * spec["batch_size"] * size * len(clock.epochs[1:]) / sum(clock.epochs[1:]))
              if len(clock.epochs) > 1 else None,
              "epoch_train_seconds": [round(t, 3) for t in clock.epochs]}
    if rank == 0:
        if storage.exists(f"{run_dir}/{BEST}"):  # the best epoch's weights, also across a resume
            local = _download(f"{run_dir}/{BEST}")
            model.load_weights(local)
            os.remove(local)
        with tempfile.TemporaryDirectory() as tmp:
            model.save(f"{tmp}/model.keras")
            _upload(f"{tmp}/model.keras", f"{run_dir}/model.keras")
        result["best"] = best
        result["metrics"] = {}
        for split, url in (("val", spec["val_url"]), ("test", spec["test_url"])):
            x, y = _load_split(url, label_field)
            probs = model.predict(preprocess(spec["preprocessing"], x.astype(np.float32)), batch_size=64, verbose=0)
            result["metrics"][split] = summary_metrics(y, probs.argmax(1), n_classes)
    return result


def summary_metrics(y_true, y_pred, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
    return {"n": int(len(y_true)), "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=list(range(n_classes)), zero_division=0)),
            "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0))}
