"""Grad-CAM (Selvaraju et al., 2017): where a model looked for the class it predicted.

Pure functions on a Keras model and image arrays; no Spark. Every lesionspark architecture is a
chain of layers (the CNN's conv blocks; ResNet50's and EfficientNet's backbone as one nested layer),
so the model splits at its last spatial feature map: features = front(x), probabilities = head(features);
inside a backbone, the last map at least 4 wide is used (at 64 px ResNet50's own last map is 2x2).
The class score is the pre-softmax logit of the predicted (or given) class; its gradient, averaged
over the map, weights the feature channels; the ReLU of the weighted sum, upsampled to the input,
is the heatmap, scaled to 0..1 per image.
"""
from __future__ import annotations

import io

import numpy as np


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
    layers = [l for l in model.layers if not isinstance(l, tf.keras.layers.InputLayer)]
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


def heatmaps(model, x, class_index=None) -> tuple[np.ndarray, np.ndarray]:
    """``x``: a preprocessed float32 batch [B, H, W, C]. Returns (heatmaps [B, H, W] in 0..1,
    probabilities [B, classes]). ``class_index``: explain this class (an int, or one per image;
    default: each image's predicted class)."""
    import tensorflow as tf
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
            h = layer(h, training=False)
        # the logits of the last Dense layer (its softmax saturates gradients of confident outputs)
        logits = tf.matmul(h, final.kernel) + final.bias
        probs = tf.nn.softmax(logits)
        idx = tf.argmax(probs, axis=1, output_type=tf.int32) if class_index is None \
            else tf.broadcast_to(tf.cast(class_index, tf.int32), [tf.shape(x)[0]])
        score = tf.gather(logits, idx, axis=1, batch_dims=1)
    grads = tape.gradient(score, a)
    weights = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * a, axis=-1, keepdims=True))
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


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's mass inside ``mask`` (NaN for an all-zero heatmap)."""
    total = float(heatmap.sum())
    return float(heatmap[mask].sum()) / total if total > 0 else float("nan")
