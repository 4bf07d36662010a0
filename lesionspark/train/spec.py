"""What one training run is: a frozen, typed spec that the driver builds once from the config
(``lesionspark.train.driver.build_spec``) and every Horovod rank receives (``lesionspark.train.executor``).

Plain data only (pickled to the ranks, written into the model card): no fallbacks of its own,
so what ``default.yaml`` says is what a run does.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The files of runs/<run_id>/, written by rank 0 every epoch and read on a resume.
CHECKPOINT = "checkpoint-weights.h5"  # weights only (HDF5 arrays): resuming runs no code from the root
BEST = "best_weights.h5"
STATE = "state.json"


def swa_weights(epoch: int) -> str:
    """``train.select: swa``: the running mean of the weights through epoch ``epoch`` (1-based; arrays only)."""
    return f"swa-{epoch:03d}.npz"


def epoch_weights(epoch: int) -> str:
    """The weights after epoch ``epoch`` (1-based), kept with ``train.keep_epoch_weights``."""
    return f"epoch-{epoch:03d}-weights.h5"


@dataclass(frozen=True)
class Augment:
    """Per-batch augmentation (``lesionspark.modeling.augment``): rotation as a fraction of a full turn."""
    enabled: bool
    rotation: float
    contrast: float
    brightness: float


@dataclass(frozen=True)
class Finetune:
    """ResNet50 fine-tuning: head-only epochs, then the top ``blocks`` at ``lr_factor`` x the rate."""
    head_epochs: int
    blocks: int
    lr_factor: float


@dataclass(frozen=True)
class TrainSpec:
    # the run and its data
    run_id: str
    run_dir: str
    dataset: str
    fingerprint: str
    balance: str
    train_url: str
    val_url: str
    test_url: str
    n_train: int
    train_counts: dict
    image_size: int
    resize: str
    # the model
    arch: str
    model_name: str
    model_params: dict
    metadata: tuple  # model.metadata: clinical fields fused with the image (lesionspark.dataset.clinical), or ()
    preprocessing: str
    mode: str
    n_classes: int
    label_field: str
    classes: list
    class_weight: dict | None
    # optimisation
    epochs: int
    batch_size: int
    learning_rate: float
    lr_scaling: str
    warmup_epochs: int
    schedule: str
    loss: str
    focal_gamma: float
    monitor: str
    patience: int
    select: str
    swa_epochs: int
    augment: Augment
    finetune: Finetune
    bn_batches: int
    shuffle_buffer: int
    seed: int
    samples_per_epoch: int | None
    compression: str
    backward_passes_per_step: int
    # the ranks
    num_proc: int
    threads: int
    reader_workers: int
    deterministic: bool
    sharding: str
    row_groups: int
    sleep_after_epoch: float
    keep_epoch_weights: bool = False

    def hyperparameters(self) -> dict:
        """The model card's ``hyperparameters`` (JSON-ready)."""
        keys = ("epochs", "batch_size", "learning_rate", "warmup_epochs", "loss", "focal_gamma", "monitor",
                "patience", "select", "swa_epochs", "augment", "seed", "lr_scaling", "schedule", "bn_batches", "class_weight",
                "compression", "backward_passes_per_step")
        out = {k: getattr(self, k) for k in keys}
        out["augment"] = dataclasses.asdict(self.augment)
        return out

    def replace(self, **changes) -> "TrainSpec":
        return dataclasses.replace(self, **changes)
