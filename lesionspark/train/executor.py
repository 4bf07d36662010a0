"""What each Horovod rank runs (the driver side is ``lesionspark.train.driver``). Runs in Horovod ranks.

``train_worker(spec)`` is shipped by ``horovod.spark.run`` to N Spark tasks with a ``TrainSpec``.
Each rank sets its thread budget before TensorFlow starts, reads its shard of the Petastorm training
data, trains with ``hvd.DistributedOptimizer`` (learning rate scaled as the spec says, warm-up),
starts from rank 0's weights, and validates its shard of val each epoch (``callbacks``: the
confusion matrices are allreduced, so every rank sees the whole split's figures). Rank 0
checkpoints every epoch under ``runs/<run_id>/``, and a rank that finds a checkpoint resumes from
it. At the end every rank scores its shards of val and test with the best epoch's weights.
"""
from __future__ import annotations

import hashlib
import math
import tempfile
import time
import zlib

import numpy as np

from ..store import storage
from ..dataset.clinical import encode, width
from ..modeling.models import METADATA_INPUT
from ..dataset.petastorm_reader import make_reader
from ..core.progress import quiet_library_warnings
from ..core.threads import limit_threads
from .spec import BEST, CHECKPOINT, TrainSpec


def scaled_learning_rate(lr: float, workers: int, rule: str) -> float:
    """The learning rate for ``workers`` data-parallel ranks: ``linear`` (x N, Goyal et al., for
    SGD), ``sqrt`` (x sqrt N, the usual rule for Adam) or ``none``."""
    factor = {"linear": workers, "sqrt": workers ** 0.5, "none": 1}.get(rule)
    if factor is None:
        raise ValueError(f"train.lr_scaling must be linear, sqrt or none, got {rule!r}")
    return lr * factor


def cosine_rate(peak: float, epoch: int, warmup: int, epochs: int) -> float:
    """Cosine decay from ``peak`` after warm-up to near zero at the last epoch (per epoch)."""
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


def shard_of(image_id, size: int) -> int:
    """The rank (of ``size``) whose shard holds ``image_id``: a stable hash, the same in every process."""
    return zlib.crc32(str(image_id).encode()) % size


def metadata_transform(fields: tuple):
    """A Petastorm ``TransformSpec`` that replaces the clinical ``fields`` of each row by their encoded
    vector ``metadata`` (``clinical.encode``), in the reader's threads; None for an image-only model."""
    if not fields:
        return None
    from petastorm import TransformSpec

    def add(row: dict) -> dict:
        row[METADATA_INPUT] = encode(fields, [row])[0][0]
        return row
    return TransformSpec(add, edit_fields=[(METADATA_INPUT, np.float32, (width(fields),), False)],
                         removed_fields=list(fields))


def load_split(url: str, label_field: str, rank: int = 0, size: int = 1, metadata: tuple = ()):
    """A split, or with ``size`` > 1 the rank's shard of it (by ``shard_of``), as uint8 images,
    integer labels and the encoded ``metadata`` vectors (None for an image-only model): for validation
    and test, every row once, row groups in file order.

    Read with Petastorm's ``dummy`` pool (in this thread). Its ``thread`` pool can end a one-epoch
    read early: ``ThreadPool.get_results`` (petastorm 0.13.1) checks that every ventilated item is
    processed and then, separately, that the ventilator is done; when the ventilator thread
    ventilates the last items between those two checks, the read stops without them. It dropped
    1-4 of 40 single-row row groups in about half of the reads here (tests/test_parts.py). Training's
    endless reader (``num_epochs=None``) never ends, so it is not affected."""
    from petastorm.predicates import in_lambda
    fields, kw = ["image", label_field, *metadata], {"transform_spec": metadata_transform(metadata)}
    if size > 1:
        fields.append("image_id")  # petastorm reads predicate fields as part of the schema
        kw["predicate"] = in_lambda(["image_id"], lambda image_id: shard_of(image_id, size) == rank)
    images, labels, meta = [], [], []
    with make_reader(url, schema_fields=fields, num_epochs=1, shuffle_row_groups=False,
                     reader_pool_type="dummy", **kw) as reader:
        for row in reader:
            images.append(row.image)
            labels.append(int(getattr(row, label_field)))
            if metadata:
                meta.append(getattr(row, METADATA_INPUT))
    vectors = (np.stack(meta) if meta else np.zeros((0, width(metadata)), np.float32)) if metadata else None
    return (np.stack(images) if images else np.zeros((0,), np.uint8)), np.array(labels, dtype=np.int64), vectors


def _train_dataset(spec: TrainSpec, rank: int, size: int):
    """(reader, dataset) of this rank's shard of the training data: shuffled, batched, augmented,
    preprocessed, one-hot labels, repeating forever."""
    import tensorflow as tf
    from petastorm.predicates import in_lambda
    from petastorm.tf_utils import make_petastorm_dataset
    from ..modeling.augment import augment_batch
    from ..modeling.models import preprocess

    fields = ["image", spec.label_field, *spec.metadata]
    # Petastorm decodes the PNGs in its thread pool (OpenCV releases the GIL): in parallel with
    # each other and with the training step.
    # deterministic: one decoding thread, so that rows arrive in the seeded order, not completion order
    threads = 1 if spec.deterministic else spec.reader_workers
    kw = dict(num_epochs=None, shuffle_row_groups=True, seed=spec.seed + rank, workers_count=threads,
              reader_pool_type="thread", transform_spec=metadata_transform(spec.metadata))
    if spec.sharding == "row_groups":
        kw.update(cur_shard=rank, shard_count=size)
    else:  # fewer row groups than ranks: shard rows by a stable hash of the image id
        fields.append("image_id")  # petastorm reads predicate fields as part of the schema
        kw["predicate"] = in_lambda(["image_id"], lambda image_id: shard_of(image_id, size) == rank)
    reader = make_reader(spec.train_url, schema_fields=fields, **kw)
    ds = make_petastorm_dataset(reader)
    if spec.metadata:  # a metadata model: the images and the encoded vectors travel together
        ds = ds.map(lambda r: ((r.image, getattr(r, METADATA_INPUT)), tf.cast(getattr(r, spec.label_field), tf.int32)))
    else:
        ds = ds.map(lambda r: (r.image, tf.cast(getattr(r, spec.label_field), tf.int32)))
    ds = ds.shuffle(spec.shuffle_buffer, seed=spec.seed + rank).batch(spec.batch_size)
    aug = spec.augment
    rng = tf.random.Generator.from_seed(spec.seed * 1000 + rank)

    def to_model(x, y):  # whole batches from here on: one op per batch, not per image
        x, meta = x if spec.metadata else (x, None)
        x = tf.cast(x, tf.float32)
        if aug.enabled:
            x = augment_batch(x, rng, aug.rotation, aug.contrast, aug.brightness)
        x = preprocess(spec.preprocessing, x)
        return ({"image": x, METADATA_INPUT: meta} if spec.metadata else x), tf.one_hot(y, spec.n_classes)

    ds = ds.map(to_model, num_parallel_calls=1)
    return reader, ds.prefetch(tf.data.AUTOTUNE)


def _sample_batches(spec: TrainSpec, rank: int, size: int):
    """PreciseBN's fixed sample: ``n`` training batches from a reader of their own."""
    def take(n: int) -> list:
        reader, ds = _train_dataset(spec, rank, size)
        try:
            return [x for x, _ in ds.take(n)]
        finally:
            reader.stop()
            reader.join()
    return take


def _loss(spec: TrainSpec):
    import tensorflow as tf
    if spec.loss == "focal":
        return tf.keras.losses.CategoricalFocalCrossentropy(gamma=spec.focal_gamma)
    return tf.keras.losses.CategoricalCrossentropy()


def _compile(model, spec: TrainSpec, rate: float, loss) -> None:
    import tensorflow as tf
    import horovod.tensorflow.keras as hvd
    from .callbacks import MacroRecall
    opt = hvd.DistributedOptimizer(
        tf.keras.optimizers.Adam(rate),
        compression=hvd.Compression.fp16 if spec.compression == "fp16" else hvd.Compression.none,
        backward_passes_per_step=spec.backward_passes_per_step, average_aggregated_gradients=True)
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy", MacroRecall(spec.n_classes)])


def _pretrained_finetune(spec: TrainSpec) -> bool:
    from ..modeling.models import from_scratch
    return spec.arch == "resnet50" and spec.model_params.get("mode") == "finetune" \
        and not from_scratch("finetune", spec.model_params.get("weights"))


def _start_model(spec: TrainSpec, state, lr: float, loss):
    """The compiled model: from the spec, or on a resume with the checkpoint's weights and rate."""
    from ..modeling.models import build, unfreeze_top
    model = build(spec.arch, spec.image_size, spec.n_classes, spec.model_params, width(spec.metadata))
    if state is None:
        _compile(model, spec, lr, loss)
        return model
    if _pretrained_finetune(spec):
        unfreeze_top(model, spec.finetune.blocks)  # the checkpoint was taken after the warm-up
    with storage.local_copy(f"{spec.run_dir}/{CHECKPOINT}", suffix=".h5") as local:
        model.load_weights(local)  # arrays only: an HDF5 full-model load would deserialise layer code
    _compile(model, spec, state.learning_rate, loss)
    return model


def _schedule(spec: TrainSpec, lr: float, steps: int, initial_epoch: int) -> list:
    """Warm-up, then cosine decay or halving on a plateau."""
    import tensorflow as tf
    import horovod.tensorflow.keras as hvd
    out = []
    if initial_epoch < spec.warmup_epochs:
        out.append(hvd.callbacks.LearningRateWarmupCallback(
            initial_lr=lr, warmup_epochs=spec.warmup_epochs, steps_per_epoch=steps, verbose=0))
    if spec.schedule == "cosine":
        out.append(tf.keras.callbacks.LearningRateScheduler(
            lambda epoch, current: cosine_rate(lr, epoch, spec.warmup_epochs, spec.epochs)
            if epoch >= spec.warmup_epochs else current))
    else:
        out.append(tf.keras.callbacks.ReduceLROnPlateau(monitor=spec.monitor, mode="max", factor=0.5,
                                                        patience=max(1, spec.patience // 2), min_lr=1e-6))
    return out


def _callbacks(spec: TrainSpec, model, state, resumed: bool, rank: int, size: int, lr: float, steps: int, loss):
    """(callbacks in the order ``lesionspark.train.callbacks`` explains, the train clock)."""
    import horovod.tensorflow.keras as hvd
    from . import callbacks as cb
    x_val, y_val, m_val = load_split(spec.val_url, spec.label_field, rank, size, spec.metadata)
    bn = cb.PreciseBatchNorm(model, spec.bn_batches, _sample_batches(spec, rank, size))
    clock = cb.TrainClock()
    # only select: best stops early: the other rules keep the last epochs, which must run
    patience = spec.patience if spec.select == "best" else spec.epochs
    early = cb.ResumableEarlyStopping(state, resumed, monitor=spec.monitor, mode="max", patience=patience)
    average = [cb.WeightAverage(spec, state, rank, bn)] if spec.select == "swa" else []  # before the epoch is recorded
    return [clock, hvd.callbacks.BroadcastGlobalVariablesCallback(0), cb.ShardedValidation(spec, x_val, y_val, m_val, bn, loss),
            hvd.callbacks.MetricAverageCallback(), *_schedule(spec, lr, steps, state.epoch), early, *average,
            cb.Checkpoint(spec, state, rank, early)], clock


def _final_metrics(model, spec: TrainSpec, rank: int, size: int) -> dict:
    """Every rank: the best weights (rank 0's) scored on its shards of val and test, allreduced."""
    import horovod.tensorflow as hvd_tf
    from .callbacks import shard_confusion
    from ..modeling.metrics import confusion_summary
    if rank == 0 and storage.exists(f"{spec.run_dir}/{BEST}"):  # the best epoch's weights, also across a resume
        with storage.local_copy(f"{spec.run_dir}/{BEST}", suffix=".h5") as local:
            model.load_weights(local)
    hvd_tf.broadcast_variables(model.variables, root_rank=0)
    return {split: confusion_summary(shard_confusion(model, spec, *load_split(url, spec.label_field, rank, size,
                                                                              spec.metadata))[0])
            for split, url in (("val", spec.val_url), ("test", spec.test_url))}


def digest(weights) -> str:
    """sha256 over the weights' bytes in order: equal on every rank that is in lockstep."""
    return hashlib.sha256(b"".join(w.numpy().tobytes() for w in weights)).hexdigest()


def train_worker(spec: TrainSpec) -> dict:
    limit_threads(spec.threads)
    quiet_library_warnings()  # on every row group read, burying the epoch progress
    # deferred: TensorFlow and Horovod start only after the thread budget is set
    import tensorflow as tf
    import horovod.tensorflow.keras as hvd
    from .callbacks import RunState

    hvd.init()
    _gpu_setup(hvd)
    rank, size = hvd.rank(), hvd.size()
    tf.keras.utils.set_random_seed(spec.seed)
    if spec.deterministic:  # same seed, same data and ranks: bit-identical weights (docs/benchmarks.md)
        tf.config.experimental.enable_op_determinism()
    loaded = RunState.load(spec.run_dir)
    state = loaded or RunState()
    lr, loss = scaled_learning_rate(spec.learning_rate, size, spec.lr_scaling), _loss(spec)
    model = _start_model(spec, loaded, lr, loss)
    reader, train_ds = _train_dataset(spec, rank, size)
    per_epoch = spec.samples_per_epoch or spec.n_train  # a fixed budget, or one pass
    steps = max(1, -(-per_epoch // (spec.batch_size * size)))
    callbacks, clock = _callbacks(spec, model, state, loaded is not None, rank, size, lr, steps, loss)
    initial_epoch = state.epoch
    start = time.perf_counter()
    if _pretrained_finetune(spec) and initial_epoch == 0:
        # Warm-up of the head with the backbone frozen, then the top blocks at a lower rate.
        from ..modeling.models import unfreeze_top
        model.fit(train_ds, steps_per_epoch=steps, epochs=spec.finetune.head_epochs, verbose=0,
                  callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0)], class_weight=spec.class_weight)
        unfreeze_top(model, spec.finetune.blocks)
        _compile(model, spec, lr * spec.finetune.lr_factor, loss)
    if initial_epoch < spec.epochs:
        model.fit(train_ds, steps_per_epoch=steps, epochs=spec.epochs, initial_epoch=initial_epoch,
                  class_weight=spec.class_weight, callbacks=callbacks, verbose=2 if rank == 0 else 0)
    seconds = time.perf_counter() - start
    reader.stop()
    reader.join()
    result = {"rank": rank, "size": size, "initial_epoch": initial_epoch,
              "epochs_run": state.epochs_run, "history": state.history, "seconds": seconds, "steps_per_epoch": steps,
              # Trainable weights are synchronised by the optimizer's allreduce; batch-norm moving
              # statistics by ShardedValidation. Both must be identical on every rank.
              "trainable_sha256": digest(model.trainable_weights),
              "non_trainable_sha256": digest(model.non_trainable_weights),
              "samples_per_s": clock.samples_per_s(steps * spec.batch_size * size),
              "epoch_train_seconds": [round(t, 3) for t in clock.epochs], "best": state.best}
    result["metrics"] = _final_metrics(model, spec, rank, size)
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            model.save(f"{tmp}/model.keras")
            storage.upload_file(f"{tmp}/model.keras", f"{spec.run_dir}/model.keras")
    return result
