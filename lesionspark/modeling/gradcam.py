"""Class-activation heatmaps: where a model looked for the class it predicted (pure: no Spark).

Three published methods over the same feature map A and the gradient G of the class score:

- ``gradcam`` (Selvaraju et al., 2017): channel weights = G averaged over the map; ReLU(sum_c w_c A_c).
  Faithful for a global-average-pooling head; behind a Flatten head the sum can be negative at
  every position, and the map is then all zero.
- ``hirescam`` (Draelos & Carin, 2020): ReLU(sum_c G_c * A_c), element-wise, so each position keeps
  its own gradient; provably the position's contribution for models ending in dense layers, and
  equal to Grad-CAM (up to scale) behind a GAP head.
- ``gradcampp`` (Chattopadhyay et al., 2018): channel weights from positive gradients with the
  second-order alpha coefficients (the exponential-score closed form).

A map whose ReLU is zero everywhere means the model found no positive evidence for the class at
that layer: ``empty`` says so; callers record it (``explanation_empty``) rather than draw a blank
overlay.

Pure functions on a Keras model and image arrays; no Spark. Every lesionspark architecture is a
chain of layers (the CNN's conv blocks; ResNet50's and EfficientNet's backbone as one nested layer),
so the model splits at its last spatial feature map: features = front(x), probabilities = head(features);
inside a backbone, the last map at least 4 wide is used (at 64 px ResNet50's own last map is 2x2).
The class score is the pre-softmax logit of the predicted (or given) class; the map, upsampled to
the input, is scaled to 0..1 per image.

Runs in executors (explain, score's flagged overlays) and on the driver (the report's grid).
"""
from __future__ import annotations

import io

import numpy as np

from .models import FUSE, METADATA_EMBED


METHODS = ("hirescam", "gradcam", "gradcampp")
MIN_MAP = 4  # a map this wide at least: a backbone's last 1x1 or 2x2 map (small inputs) says nothing of where


def _spatial(layer) -> bool:
    shape = layer.output_shape
    return isinstance(shape, tuple) and len(shape) == 4


def _split(model):
    """(front layers, the layer giving the feature map, head layers). The map is the last layer with a
    4-D (spatial) output, pooling and dropout just before the head skipped so that it keeps its
    resolution. When that layer is a nested backbone, the map is taken inside it: its last feature
    map at least MIN_MAP wide, through a two-output view of the backbone (that map, its output)."""
    import tensorflow as tf
    layers = [l for l in model.layers if not isinstance(l, tf.keras.layers.InputLayer) and l.name != METADATA_EMBED]
    spatial = [i for i, l in enumerate(layers) if _spatial(l)]
    if not spatial:
        raise ValueError(f"model {model.name!r} has no spatial feature map for Grad-CAM")
    last = spatial[-1]
    while last > 0 and isinstance(layers[last], (tf.keras.layers.MaxPooling2D, tf.keras.layers.Dropout)):
        last -= 1
    layer = layers[last]
    if isinstance(layer, tf.keras.Model):
        maps = [l for l in layer.layers if _spatial(l) and not isinstance(l, tf.keras.layers.InputLayer)]
        wide = [l for l in maps if min(l.output_shape[1:3]) >= MIN_MAP]
        inner = (wide or maps)[-1]
        layer = tf.keras.Model(layer.input, [inner.output, layer.output], name=f"{layer.name}_gradcam")
    return layers[:last], layer, layers[last + 1:]


def combine(method: str, grads, a):
    """The method's map [B, h, w] (before the ReLU) from the gradient and the feature map [B, h, w, C]."""
    import tensorflow as tf
    if method == "gradcam":
        return tf.reduce_sum(tf.reduce_mean(grads, axis=[1, 2], keepdims=True) * a, axis=-1)
    if method == "hirescam":
        return tf.reduce_sum(grads * a, axis=-1)
    if method == "gradcampp":
        g2 = tf.square(grads)
        denom = 2.0 * g2 + tf.reduce_sum(a, axis=[1, 2], keepdims=True) * g2 * grads
        alpha = tf.math.divide_no_nan(g2, denom)
        weights = tf.reduce_sum(alpha * tf.nn.relu(grads), axis=[1, 2], keepdims=True)
        return tf.reduce_sum(weights * a, axis=-1)
    raise ValueError(f"inference.heatmap must be one of {', '.join(METHODS)}, got {method!r}")


def empty(cams: np.ndarray) -> np.ndarray:
    """Per map: no positive evidence anywhere (the ReLU'd map is all zero)."""
    return cams.reshape(len(cams), -1).max(axis=1) <= 0 if len(cams) else np.zeros(0, bool)


def heatmaps(model, x, class_index=None, method: str = "hirescam", metadata=None) -> tuple[np.ndarray, np.ndarray]:
    """``x``: a preprocessed float32 batch [B, H, W, C]. Returns (heatmaps [B, H, W] in 0..1,
    probabilities [B, classes]). ``class_index``: explain this class (an int, or one per image;
    default: each image's predicted class). ``method``: one of ``METHODS``. ``metadata``: the encoded
    vectors of a model with a metadata input (the map stays on the image: the metadata only shifts
    the logits it is computed from)."""
    import tensorflow as tf
    if method not in METHODS:
        raise ValueError(f"inference.heatmap must be one of {', '.join(METHODS)}, got {method!r}")
    front, mid, head = _split(model)
    x = tf.convert_to_tensor(x, tf.float32)
    final = head[-1]
    with tf.GradientTape() as tape:
        tape.watch(x)  # frozen backbones have no watched variables: record from the input
        h = x
        for layer in front:
            h = layer(h, training=False)
        out = mid(h, training=False)
        a, h = out if isinstance(out, (list, tuple)) else (out, out)
        for layer in head[:-1]:
            if layer.name == FUSE:  # late fusion: the embedded metadata joins the image features here
                h = layer([h, model.get_layer(METADATA_EMBED)(tf.convert_to_tensor(metadata, tf.float32))])
                continue
            h = layer(h, training=False)
        # the logits of the last Dense layer (its softmax saturates gradients of confident outputs)
        logits = tf.matmul(h, final.kernel) + final.bias
        probs = tf.nn.softmax(logits)
        idx = tf.argmax(probs, axis=1, output_type=tf.int32) if class_index is None \
            else tf.broadcast_to(tf.cast(class_index, tf.int32), [tf.shape(x)[0]])
        score = tf.gather(logits, idx, axis=1, batch_dims=1)
    grads = tape.gradient(score, a)
    cam = tf.nn.relu(combine(method, grads, a))[..., None]
    cam = tf.image.resize(cam, tf.shape(x)[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = np.divide(cam, peak[:, None, None], out=np.zeros_like(cam), where=peak[:, None, None] > 0)
    return cam.astype(np.float32), probs.numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``image`` uint8 [H, W, 3] with ``heatmap`` [H, W] in 0..1 drawn over it in the jet colours."""
    from matplotlib import colormaps
    colour = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colour, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


