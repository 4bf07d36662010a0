"""Each model builds and runs a forward pass at 28, 64 and 128 px (weights=None: no network)."""
import os
import time

import numpy as np
import pytest

from lesionspark.modeling.models import PREPROCESSING, WeightsError, build, preprocess, unfreeze_top


@pytest.mark.parametrize("arch", ["cnn", "resnet50", "efficientnet"])
@pytest.mark.parametrize("size", [28, 64, 128])
def test_forward_pass(arch, size):
    model = build(arch, size, 7, {"weights": None})
    x = preprocess(PREPROCESSING[arch], np.random.default_rng(0).integers(0, 256, (2, size, size, 3)))
    probs = model(x, training=False).numpy()
    assert probs.shape == (2, 7)
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_binary_head():
    assert build("cnn", 32, 2).output_shape == (None, 2)


def test_resnet_frozen_and_finetune():
    model = build("resnet50", 64, 7, {"weights": None})
    frozen = sum(np.prod(w.shape) for w in model.trainable_weights)
    assert frozen == 2048 * 7 + 7  # only the head trains
    n = unfreeze_top(model, 3)
    assert n > 0
    assert sum(np.prod(w.shape) for w in model.trainable_weights) > frozen


@pytest.mark.parametrize("arch", ["resnet50", "efficientnet"])
def test_finetune_from_random_init_trains_the_whole_backbone(arch):
    model = build(arch, 32, 7, {"mode": "finetune"})
    head = 7 * (2048 if arch == "resnet50" else 1280) + 7
    assert sum(np.prod(w.shape) for w in model.trainable_weights) > 100 * head
    with pytest.raises(ValueError, match="frozen or finetune"):
        build(arch, 32, 7, {"mode": "scratch"})


def test_imagenet_without_network_fails_fast_and_clearly():
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="model.weights=/path"):
        build("resnet50", 64, 7, {"weights": "imagenet"})
    assert time.perf_counter() - start < 60


def test_local_weights_file(tmp_path):
    import tensorflow as tf
    base = tf.keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = str(tmp_path / "resnet50_notop.h5")
    base.save_weights(path)
    model = build("resnet50", 64, 7, {"weights": path})
    loaded = next(l for l in model.layers if isinstance(l, tf.keras.Model))
    assert np.array_equal(loaded.get_weights()[0], base.get_weights()[0])
    with pytest.raises(WeightsError, match="not found"):
        build("resnet50", 64, 7, {"weights": str(tmp_path / "missing.h5")})
    # A URI (hdfs://, s3a://, file://: cluster nodes have no internet) is copied to a private temporary
    # file (never a predictable shared name another user could plant), removed once the model is built.
    import glob
    import tempfile
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "lesionspark-weights-*")))
    by_uri = build("resnet50", 64, 7, {"weights": "file://" + path})
    loaded = next(l for l in by_uri.layers if isinstance(l, tf.keras.Model))
    assert np.array_equal(loaded.get_weights()[0], base.get_weights()[0])
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "lesionspark-weights-*"))) == before
    with pytest.raises(WeightsError, match="not found"):
        build("resnet50", 64, 7, {"weights": "file://" + str(tmp_path / "missing.h5")})


def test_preprocessing_names():
    x = np.full((1, 4, 4, 3), 255.0)
    assert np.allclose(preprocess("scale_0_1", x), 1.0)
    bgr = preprocess("resnet50_caffe", np.array([[[[255.0, 0.0, 0.0]]]])).numpy().ravel()
    assert np.allclose(bgr, [-103.939, -116.779, 255 - 123.68])  # channels reversed, means removed
    with pytest.raises(ValueError):
        preprocess("nope", x)
