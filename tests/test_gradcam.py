"""Heatmaps on every architecture and method: the input's size, in 0..1, not constant; overlays."""
import numpy as np
import pytest

from benchmarks.measures import lesion_mask, mass_inside
from lesionspark.modeling.gradcam import METHODS, empty, heatmaps, overlay, png
from lesionspark.modeling.models import build, preprocess
from lesionspark.imaging.synth import CLASS_STYLE, lesion_params, render


def _lesions(size):
    return np.stack([render(lesion_params(f"L{i}", dx, 0), f"I{i}", 0, size * 2, size * 2)[::2, ::2]
                     for i, dx in enumerate(CLASS_STYLE)])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_map_per_image(method):
    import tensorflow as tf
    tf.keras.utils.set_random_seed(1)
    model = build("cnn", 32, 7, {"filters": [8, 16, 16], "dense": 16})
    x = preprocess("scale_0_1", _lesions(32).astype(np.float32))
    cams, probs = heatmaps(model, x, method=method)
    assert cams.shape == (len(x), 32, 32) and cams.min() >= 0 and cams.max() <= 1
    assert all(b or c.std() > 1e-3 for c, b in zip(cams, empty(cams)))
    with pytest.raises(ValueError, match="inference.heatmap"):
        heatmaps(model, x, method="saliency")


def test_hirescam_equals_gradcam_behind_a_global_average_pooling_head():
    """Behind GAP the gradient is the same at every position, so gradient x activation summed over
    channels is Grad-CAM's map up to scale: the two agree once scaled to 0..1."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(2)
    L = tf.keras.layers
    inputs = tf.keras.Input((32, 32, 3))
    h = L.Conv2D(8, 3, padding="same", activation="relu")(L.Conv2D(8, 3, padding="same", activation="relu")(inputs))
    model = tf.keras.Model(inputs, L.Dense(7, activation="softmax")(L.GlobalAveragePooling2D()(h)))
    x = preprocess("scale_0_1", _lesions(32).astype(np.float32))
    a, _ = heatmaps(model, x, method="gradcam")
    b, _ = heatmaps(model, x, method="hirescam")
    assert np.allclose(a, b, atol=1e-4)


def test_empty_marks_maps_with_no_positive_evidence():
    cams = np.zeros((3, 4, 4), np.float32)
    cams[1, 2, 2] = 0.5
    assert list(empty(cams)) == [True, False, True]
    assert empty(np.zeros((0, 4, 4))).shape == (0,)


@pytest.mark.parametrize("arch,size", [("cnn", 32), ("cnn", 64), ("resnet50", 32), ("efficientnet", 32)])
def test_heatmap_has_the_input_shape_and_is_not_constant(arch, size):
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)
    model = build(arch, size, 7, {"filters": [8, 16, 16], "dense": 16} if arch == "cnn" else {})
    images = _lesions(size)
    x = preprocess({"cnn": "scale_0_1", "resnet50": "resnet50_caffe", "efficientnet": "efficientnet_identity"}[arch],
                   images.astype(np.float32))
    cams, probs = heatmaps(model, x)
    assert cams.shape == (len(images), size, size) and probs.shape == (len(images), 7)
    assert np.allclose(probs, model.predict(x, verbose=0), atol=1e-4)  # the same forward pass
    assert cams.min() >= 0 and cams.max() <= 1
    varied = [c.std() > 1e-3 for c in cams]
    assert sum(varied) >= len(cams) - 1, "heatmaps are constant"
    cams1, _ = heatmaps(model, x, class_index=(probs.argmax(1) + 1) % 7)  # another class, another map
    assert not np.allclose(cams, cams1)
    over = overlay(images[0], cams[0])
    assert over.shape == images[0].shape and over.dtype == np.uint8
    assert png(over)[:8] == b"\x89PNG\r\n\x1a\n"


def test_mass_inside_and_the_generators_mask():
    cam = np.zeros((10, 10), np.float32)
    cam[2:5, 2:5] = 1.0
    mask = np.zeros((10, 10), bool)
    mask[:5, :5] = True
    assert mass_inside(cam, mask) == 1.0
    assert mass_inside(cam, ~mask) == 0.0
    assert np.isnan(mass_inside(np.zeros_like(cam), mask))
    m = lesion_mask("HAM_L1", "ISIC_1", "mel", 0, 64)
    assert m.shape == (64, 64) and m.dtype == bool
    assert 0.05 < m.mean() < 0.8 and m[32, 32]  # a lesion around the centre, skin around it
