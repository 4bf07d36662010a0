"""Training-time augmentation of whole batches (vectorised: a handful of ops per batch, not per image).

Dermatoscopic images have no "up": every image of a batch gets its own random flip, quarter turn,
small rotation (the three as one affine map), brightness and contrast. Input and output are float32 batches of RGB 0..255
(before the model's preprocessing); the label is untouched.

Runs in Horovod ranks (the training input pipeline).
"""
from __future__ import annotations

import math


def augment_batch(x, rng=None, rotation: float = 0.1, contrast: float = 0.1, brightness: float = 0.1):
    """``x``: float32 [B, H, W, 3] in 0..255 (square images). ``rotation``: the largest extra turn as
    a fraction of a full circle (0.1 = 36 degrees), on top of a random quarter turn; ``contrast`` and
    ``brightness``: the largest relative change. ``rng``: a ``tf.random.Generator`` made once (a seeded
    one makes runs repeatable); default the global generator. Returns a batch of the same shape,
    clipped to 0..255."""
    import tensorflow as tf
    x = tf.convert_to_tensor(x, tf.float32)
    b = tf.shape(x)[0]
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    rng = rng or tf.random.get_global_generator()

    # Flip, quarter turn and small rotation of each image folded into one affine map, applied to the
    # batch by one op (output pixel -> input pixel, about the image centre).
    flip = tf.where(rng.uniform([b]) < 0.5, -1.0, 1.0)
    angle = tf.cast(rng.uniform([b], 0, 4, dtype=tf.int32), tf.float32) * (math.pi / 2)
    if rotation:
        angle += rng.uniform([b], -rotation, rotation) * 2 * math.pi
    cx, cy = (tf.cast(w, tf.float32) - 1) / 2, (tf.cast(h, tf.float32) - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1, b0, b1 = cos * flip, -sin, sin * flip, cos
    zeros = tf.zeros_like(angle)
    transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, zeros, zeros], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transform, output_shape=tf.shape(x)[1:3],
                                              fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    if contrast or brightness:
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        c = rng.uniform([b, 1, 1, 1], 1 - contrast, 1 + contrast)
        g = rng.uniform([b, 1, 1, 1], 1 - brightness, 1 + brightness)
        x = ((x - mean) * c + mean) * g
    return tf.clip_by_value(x, 0.0, 255.0)
