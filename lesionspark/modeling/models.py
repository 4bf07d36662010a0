"""Keras model builders, one per architecture, and the preprocessing each one names.

Models take uint8-range RGB images (float32 tensors of 0..255) after ``preprocess(name, x)``;
the name is stored in the model card so scoring applies exactly the same function.

Runs in Horovod ranks (build) and in executors and on the driver (``preprocess`` before predict).
"""
from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from ..store import storage

log = logging.getLogger(__name__)

ARCHITECTURES = ("cnn", "resnet50", "efficientnet")
# the metadata branch's layer names (``lesionspark.modeling.gradcam`` follows the image path around them)
METADATA_INPUT, METADATA_EMBED, FUSE, METADATA_UNITS = "metadata", "metadata_embed", "fuse", 16
PREPROCESSING = {"cnn": "scale_0_1", "resnet50": "resnet50_caffe", "efficientnet": "efficientnet_identity"}


class WeightsError(RuntimeError):
    pass


def preprocess(name: str, images):
    """The named preprocessing, on a float32 batch of RGB 0..255 (numpy or tensor)."""
    import tensorflow as tf
    if name == "scale_0_1":
        return tf.cast(images, tf.float32) / 255.0
    if name == "resnet50_caffe":  # RGB -> BGR, ImageNet mean subtracted (Keras' own function)
        return tf.keras.applications.resnet50.preprocess_input(tf.cast(images, tf.float32))
    if name == "efficientnet_identity":  # EfficientNet rescales inside the model
        return tf.cast(images, tf.float32)
    raise ValueError(f"unknown preprocessing {name!r}")


@contextlib.contextmanager
def _weights_arg(weights):
    """What Keras takes as ``weights``: None, "imagenet", or a local file (a URI is copied to a private
    temporary file for the duration: Keras reads only local files)."""
    if weights in (None, "none", "None") or weights == "imagenet":
        yield None if weights != "imagenet" else "imagenet"
        return
    weights = str(weights)
    found = storage.exists(weights) if "://" in weights else os.path.exists(weights)
    if not found:
        raise WeightsError(f"weights file {weights!r} not found (model.weights takes none, imagenet, a path or a URI)")
    if "://" not in weights:
        yield weights
        return
    with storage.local_copy(weights, suffix=".h5", prefix="lesionspark-weights-") as local:
        yield local


def _backbone(factory, name: str, size: int, weights):
    import tensorflow as tf
    inputs = tf.keras.Input((size, size, 3), name="image")
    x = inputs
    if size < 32:  # the Keras applications need at least 32x32
        x = tf.keras.layers.Resizing(32, 32, name="upsample_to_32")(x)
    with _weights_arg(weights) as w:
        try:
            base = factory(include_top=False, weights=w, input_shape=(max(size, 32), max(size, 32), 3))
        except Exception as exc:
            if w == "imagenet":
                raise WeightsError(
                    f"could not get ImageNet weights for {name} ({type(exc).__name__}: {exc}). Without internet, "
                    f"download {name}'s 'notop' .h5 file elsewhere and pass model.weights=/path/to/file.h5") from None
            raise
    return inputs, x, base


def _classify(inputs, x, n_classes: int, metadata_width: int, name: str):
    """The model from image features ``x``: softmax over ``n_classes``; with ``metadata_width`` > 0 a
    second input ``metadata`` (``lesionspark.dataset.clinical``'s encoding) is embedded by a small dense layer
    and concatenated with the image features first (late fusion)."""
    import tensorflow as tf
    L = tf.keras.layers
    if metadata_width:
        meta = tf.keras.Input((metadata_width,), name=METADATA_INPUT)
        x = L.Concatenate(name=FUSE)([x, L.Dense(METADATA_UNITS, activation="relu", name=METADATA_EMBED)(meta)])
        inputs = {"image": inputs, METADATA_INPUT: meta}
    outputs = L.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name=name)


def model_inputs(model, x, metadata=None):
    """What ``model`` is called with: the preprocessed images, and for a model with a metadata input
    ``{"image": x, "metadata": metadata}`` (``clinical.encode``'s vectors, one per image)."""
    if not takes_metadata(model):
        return x
    if metadata is None:
        raise ValueError(f"model {model.name!r} takes metadata: pass its encoded vectors")
    return {"image": x, METADATA_INPUT: np.asarray(metadata, np.float32)}


def takes_metadata(model) -> bool:
    return METADATA_INPUT in list(getattr(model, "input_names", None) or [])


def build_cnn(size: int, n_classes: int, batchnorm: bool = True, dropout: float = 0.25,
              filters=(32, 64, 128), dense: int = 128, bn_momentum: float = 0.9, head: str = "flatten",
              metadata_width: int = 0):
    """The seeds' simple CNN: three conv blocks (conv, optional batch-norm, pooling, dropout), then
    ``head``: ``flatten`` (the seeds' Flatten + Dense) or ``gap`` (global average pooling + Dense)."""
    if head not in ("flatten", "gap"):
        raise ValueError(f"cnn head must be flatten or gap, got {head!r}")
    import tensorflow as tf
    L = tf.keras.layers
    inputs = tf.keras.Input((size, size, 3), name="image")
    x = inputs
    for f in filters:
        x = L.Conv2D(f, 3, padding="same", activation=None if batchnorm else "relu")(x)
        if batchnorm:
            x = L.BatchNormalization(momentum=bn_momentum)(x)
            x = L.Activation("relu")(x)
        x = L.MaxPooling2D()(x)
        x = L.Dropout(dropout)(x)
    x = L.Flatten()(x) if head == "flatten" else L.GlobalAveragePooling2D()(x)
    x = L.Dense(dense, activation="relu")(x)
    x = L.Dropout(dropout)(x)
    return _classify(inputs, x, n_classes, metadata_width, "cnn")


def build_resnet50(size: int, n_classes: int, weights=None, mode: str = "frozen", dropout: float = 0.2,
                   metadata_width: int = 0):
    """ResNet50 backbone + global average pooling head. ``frozen``: backbone not trained;
    ``finetune``: with pretrained weights, the top blocks are trained (see ``unfreeze_top``) after a
    warm-up of the head; from random init (``weights=None``), the whole network trains, batch-norm included."""
    import tensorflow as tf
    if mode not in ("frozen", "finetune"):
        raise ValueError(f"resnet50 mode must be frozen or finetune, got {mode!r}")
    inputs, x, base = _backbone(tf.keras.applications.ResNet50, "resnet50", size, weights)
    x = _attach(base, x, mode, weights)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dropout(dropout)(x)
    model = _classify(inputs, x, n_classes, metadata_width, "resnet50")
    model.backbone_name = base.name
    return model


def from_scratch(mode: str, weights) -> bool:
    """A backbone fine-tuned from random weights: nothing pretrained to protect, everything trains."""
    return mode == "finetune" and weights in (None, "none", "None")


def _attach(base, x, mode: str, weights):
    """Call the backbone: frozen in inference mode, unless it trains from scratch."""
    if from_scratch(mode, weights):
        base.trainable = True
        return base(x)
    base.trainable = False
    return base(x, training=False)


def unfreeze_top(model, n_blocks: int) -> int:
    """Make the top ``n_blocks`` ResNet stages' blocks trainable (batch-norm stays frozen).
    Returns the number of trainable layers in the backbone."""
    import tensorflow as tf
    base = next(l for l in model.layers if isinstance(l, tf.keras.Model))
    base.trainable = True
    blocks = sorted({l.name.rsplit("_", 2)[0] for l in base.layers if l.name.startswith("conv") and "_block" in l.name})
    keep = set(blocks[-n_blocks:]) if n_blocks > 0 else set()
    n = 0
    for layer in base.layers:
        block = layer.name.rsplit("_", 2)[0] if "_block" in layer.name else None
        layer.trainable = block in keep and not isinstance(layer, tf.keras.layers.BatchNormalization)
        n += layer.trainable
    return n


def build_efficientnet(size: int, n_classes: int, weights=None, variant: str = "B0", dropout: float = 0.2,
                       mode: str = "frozen", metadata_width: int = 0):
    """EfficientNet backbone + global average pooling head. ``frozen``: backbone not trained;
    ``finetune``: the whole backbone trains (batch-norm statistics too when from random init)."""
    import tensorflow as tf
    if mode not in ("frozen", "finetune"):
        raise ValueError(f"efficientnet mode must be frozen or finetune, got {mode!r}")
    factory = getattr(tf.keras.applications, f"EfficientNet{variant.upper()}", None)
    if factory is None:
        raise ValueError(f"unknown EfficientNet variant {variant!r} (B0..B7)")
    inputs, x, base = _backbone(factory, f"efficientnet{variant.lower()}", size, weights)
    if mode == "finetune" and not from_scratch(mode, weights):
        base.trainable = True
        for layer in base.layers:  # pretrained batch-norm statistics stay as they are
            layer.trainable = not isinstance(layer, tf.keras.layers.BatchNormalization)
        x = base(x, training=False)
    else:
        x = _attach(base, x, mode, weights)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    x = tf.keras.layers.Dropout(dropout)(x)
    return _classify(inputs, x, n_classes, metadata_width, f"efficientnet{variant.lower()}")


def build(arch: str, size: int, n_classes: int, params: dict | None = None, metadata_width: int = 0):
    """The model named by ``model.arch`` with its ``model.*`` parameters; ``metadata_width`` > 0 adds
    the metadata input (``clinical.width(model.metadata)``)."""
    p = dict(params or {})
    if arch == "cnn":
        return build_cnn(size, n_classes, bool(p.get("batchnorm", True)), float(p.get("dropout", 0.25)),
                         tuple(p.get("filters", (32, 64, 128))), int(p.get("dense", 128)),
                         float(p.get("bn_momentum", 0.9)), str(p.get("head", "flatten")), metadata_width)
    if arch == "resnet50":
        return build_resnet50(size, n_classes, p.get("weights"), p.get("mode", "frozen"), float(p.get("dropout", 0.2)),
                              metadata_width)
    if arch == "efficientnet":
        return build_efficientnet(size, n_classes, p.get("weights"), p.get("variant", "B0"), float(p.get("dropout", 0.2)),
                                  p.get("mode", "frozen"), metadata_width)
    raise ValueError(f"model.arch must be one of {ARCHITECTURES}, got {arch!r}")
