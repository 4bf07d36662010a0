"""The Keras callbacks of one Horovod rank, over a small ``RunState``; used by ``lesionspark.train.executor``.

Runs in Horovod ranks. It imports TensorFlow and Horovod at the top, so ``worker`` imports it only
after it has set the rank's thread budget (``lesionspark.core.threads``).

Each epoch, in this order: ``TrainClock`` ends the epoch's training time; ``ShardedValidation``
recomputes the batch-norm statistics (PreciseBN), averages them across ranks, validates this
rank's shard of val and allreduces the confusion matrix and loss, so every rank gets the whole
split's ``val_*`` figures; Horovod averages the training metrics; the learning-rate schedule and
``ResumableEarlyStopping`` read the monitor; ``Checkpoint`` records the epoch and (rank 0) writes
the weights and ``state.json``.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field

import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf

from ..store import storage
from ..modeling.metrics import confusion_summary
from ..modeling.models import model_inputs, preprocess
from .spec import BEST, CHECKPOINT, STATE, TrainSpec, epoch_weights, swa_weights


@dataclass
class RunState:
    """What a run carries from epoch to epoch and across a resume (``runs/<id>/state.json``)."""
    history: dict = field(default_factory=dict)
    best: dict | None = None  # {"value": monitor, "epoch": epoch}
    wait: int = 0  # early stopping's epochs without improvement
    epoch: int = 0  # epochs done: the next one to run
    learning_rate: float | None = None
    epochs_run: int = 0  # by this process

    @classmethod
    def load(cls, run_dir: str) -> "RunState | None":
        uri = f"{run_dir}/{STATE}"
        if not storage.exists(uri):
            return None
        s = storage.read_json(uri)
        return cls(history=dict(s["history"]), best=s.get("best"), wait=int(s.get("wait", 0)),
                   epoch=int(s["epoch"]), learning_rate=float(s["learning_rate"]))

    def record(self, epoch: int, logs: dict, monitor: str) -> bool:
        """Append the epoch's logs; True when the monitor improved on the best so far."""
        self.epochs_run += 1
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        self.history.setdefault("epoch", []).append(epoch)
        improved = self.best is None or logs.get(monitor, -np.inf) > self.best["value"]
        if improved:
            self.best = {"value": float(logs.get(monitor, 0.0)), "epoch": epoch}
        return improved

    def save(self, run_dir: str, epoch: int, learning_rate: float, wait: int) -> None:
        storage.replace_json(f"{run_dir}/{STATE}", {"epoch": epoch + 1, "history": self.history, "best": self.best,
                                                    "learning_rate": learning_rate, "wait": wait})


class MacroRecall(tf.keras.metrics.Metric):
    """Mean per-class recall (= balanced accuracy) over classes present in the labels."""

    def __init__(self, n_classes: int, name="macro_recall", **kw):
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


def all_layers(model) -> list:
    """Every layer, nested models' layers included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out += all_layers(layer)
    return out


def sync_non_trainable(model) -> None:
    """Average the batch-norm moving statistics across ranks, so every rank validates (and rank 0
    saves) the same model. Gradients are allreduced by the optimizer; these are not."""
    for i, v in enumerate(model.non_trainable_variables):
        if v.dtype.is_floating:
            v.assign(hvd.allreduce(v, op=hvd.Average, name=f"sync_non_trainable_{i}"))


def shard_confusion(model, spec: TrainSpec, x: np.ndarray, y: np.ndarray, meta=None, loss=None) -> tuple[np.ndarray, float]:
    """Every rank: the confusion matrix (and summed loss) over all ranks' shards. ``x``/``y`` (and the
    encoded ``meta`` of a metadata model) are this rank's shard (possibly empty); the same two
    allreduces run on every rank."""
    k = spec.n_classes
    cm, loss_sum = np.zeros((k, k), np.float64), 0.0
    if len(y):
        probs = model.predict(model_inputs(model, preprocess(spec.preprocessing, x.astype(np.float32)), meta),
                              batch_size=spec.batch_size, verbose=0)
        np.add.at(cm, (y, probs.argmax(1)), 1)
        if loss is not None:
            loss_sum = float(loss(tf.one_hot(y, k), probs)) * len(y)
    cm = hvd.allreduce(tf.constant(cm), op=hvd.Sum, name="shard_confusion").numpy()
    loss_sum = float(hvd.allreduce(tf.constant(loss_sum, tf.float64), op=hvd.Sum, name="shard_loss").numpy())
    return cm, loss_sum


class PreciseBatchNorm:
    """Replace the batch-norm moving statistics by the exact mean of the batch statistics of
    ``batches`` training batches under the current weights (PreciseBN, Wu & Johnson 2021). A moving
    average of the last ~1/(1-momentum) batches, taken while the weights move fast, is what
    validation and the saved model otherwise use: with momentum 0.99 and 200 steps it never settles
    (constant outputs); with 0.9 it swings from epoch to epoch.

    ``sample_batches()`` gives the fixed sample, taken once from a reader of its own: taking it from
    the training dataset would race that dataset's prefetch (and break determinism)."""

    def __init__(self, model, batches: int, sample_batches):
        self.model, self.batches, self.sample_batches = model, batches, sample_batches
        self.layers = [l for l in all_layers(model) if isinstance(l, tf.keras.layers.BatchNormalization)]
        self.sample = None

    def recompute(self) -> None:
        if not self.layers or not self.batches:
            return
        if self.sample is None:
            self.sample = self.sample_batches(self.batches)
        momenta = [l.momentum for l in self.layers]
        for i, x in enumerate(self.sample, 1):
            for l in self.layers:  # moving = mean of the i batch statistics so far
                l.momentum = 1.0 - 1.0 / i
            self.model(x, training=True)
        for l, m in zip(self.layers, momenta):
            l.momentum = m


class ShardedValidation(tf.keras.callbacks.Callback):
    """Before each validation and at the end: PreciseBN, then the statistics averaged across ranks.
    Each epoch: ``val_loss``, ``val_accuracy`` and ``val_macro_recall`` of the whole val split, from
    every rank's shard. Memory per rank is its shard of val, whatever the number of ranks."""

    def __init__(self, spec: TrainSpec, x_val: np.ndarray, y_val: np.ndarray, m_val, bn: PreciseBatchNorm, loss):
        super().__init__()
        self.spec, self.x, self.y, self.meta, self.bn, self.loss = spec, x_val, y_val, m_val, bn, loss

    def _prepare(self):
        self.bn.recompute()
        sync_non_trainable(self.model)

    def on_epoch_end(self, epoch, logs=None):
        self._prepare()
        cm, loss_sum = shard_confusion(self.model, self.spec, self.x, self.y, self.meta, self.loss)
        summary = confusion_summary(cm)
        if logs is not None and summary["n"]:
            penalty = float(tf.add_n(self.model.losses)) if self.model.losses else 0.0  # as Keras adds them
            logs.update(val_loss=loss_sum / summary["n"] + penalty, val_accuracy=summary["accuracy"],
                        val_macro_recall=summary["balanced_accuracy"])

    def on_train_end(self, logs=None):
        self._prepare()


class TrainClock(tf.keras.callbacks.Callback):
    """Seconds spent in training steps per epoch (validation excluded: it comes after this callback)."""

    def __init__(self):
        super().__init__()
        self.epochs, self._t = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(time.perf_counter() - self._t)

    def samples_per_s(self, samples_per_epoch: int) -> float | None:
        """Steady state: epochs after the first (graph tracing), training steps only."""
        steady = self.epochs[1:]
        return samples_per_epoch * len(steady) / sum(steady) if steady else None


class ResumableEarlyStopping(tf.keras.callbacks.EarlyStopping):
    """Early stopping that, on a resumed run, continues from the saved best value and wait count."""

    def __init__(self, state: RunState, resumed: bool, **kw):
        super().__init__(**kw)
        self.state, self.resumed = state, resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed and self.state.best is not None:
            self.best, self.wait = self.state.best["value"], self.state.wait


def upload_weights(model, uris: list) -> None:
    """The model's weights (HDF5 arrays only) serialised once and uploaded to each of ``uris`` in
    order, each replaced whole."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_weights(f"{tmp}/weights.h5")
        for uri in uris:
            storage.upload_file(f"{tmp}/weights.h5", uri)


class Checkpoint(tf.keras.callbacks.Callback):
    """Every epoch: record the logs in the run state; rank 0 writes the weights (and the best
    weights when the monitor improved) and ``state.json``, each replaced whole."""

    def __init__(self, spec: TrainSpec, state: RunState, rank: int, early: ResumableEarlyStopping):
        super().__init__()
        self.spec, self.state, self.rank, self.early = spec, state, rank, early

    def on_epoch_end(self, epoch, logs=None):
        improved = self.state.record(epoch, dict(logs or {}), self.spec.monitor)
        # the kept weights: best, when the monitor improved; last, every epoch; swa: WeightAverage, at the end
        keep = improved if self.spec.select == "best" else self.spec.select == "last"
        if self.rank != 0:
            return
        run_dir = self.spec.run_dir
        upload_weights(self.model, [f"{run_dir}/{BEST}"] * keep + [f"{run_dir}/{CHECKPOINT}"]
                       + [f"{run_dir}/{epoch_weights(epoch + 1)}"] * self.spec.keep_epoch_weights)
        rate = float(tf.keras.backend.get_value(self.model.optimizer.learning_rate))
        self.state.save(run_dir, epoch, rate, self.early.wait)
        if self.spec.sleep_after_epoch:
            time.sleep(self.spec.sleep_after_epoch)  # lets tests kill a run mid-way


class WeightAverage(tf.keras.callbacks.Callback):
    """``train.select: swa``: the running mean of the weights after each of the last ``swa_epochs``
    epochs. Every rank holds the same mean (the ranks are in lockstep); rank 0 also writes it, before
    ``Checkpoint`` records the epoch, as ``runs/<run>/swa-<epochs done>.npz`` (arrays only), keeping the
    previous one, so a resumed run starts from the mean through its last recorded epoch. At the end
    the model takes the mean, PreciseBN recomputes its batch-norm statistics, and rank 0 writes it as
    the run's kept weights."""

    def __init__(self, spec: TrainSpec, state: RunState, rank: int, bn: PreciseBatchNorm):
        super().__init__()
        self.spec, self.state, self.rank, self.bn = spec, state, rank, bn
        self.mean, self.n = None, 0

    def on_train_begin(self, logs=None):
        uri = f"{self.spec.run_dir}/{swa_weights(self.state.epoch)}"
        if self.state.epoch and storage.exists(uri):  # a resumed run: the mean through its last recorded epoch
            with storage.local_copy(uri, suffix=".npz") as local, np.load(local, allow_pickle=False) as saved:
                self.n = int(saved["n"])
                self.mean = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 <= self.spec.epochs - self.spec.swa_epochs:
            return
        weights = self.model.get_weights()
        self.n += 1
        self.mean = weights if self.mean is None else [m + (w - m) / self.n for m, w in zip(self.mean, weights)]
        if self.rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                np.savez(f"{tmp}/swa.npz", n=np.array(self.n), **{f"w{i}": m for i, m in enumerate(self.mean)})
                storage.upload_file(f"{tmp}/swa.npz", f"{self.spec.run_dir}/{swa_weights(epoch + 1)}")
            older = f"{self.spec.run_dir}/{swa_weights(epoch - 1)}"
            if epoch >= 1 and storage.exists(older):
                storage.delete(older)

    def on_train_end(self, logs=None):
        if not self.n:
            return
        self.model.set_weights(self.mean)
        self.bn.recompute()
        sync_non_trainable(self.model)
        if self.rank == 0:
            upload_weights(self.model, [f"{self.spec.run_dir}/{BEST}"])
