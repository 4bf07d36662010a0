"""Batch augmentation: each image its own symmetry, rotation and photometric change; shapes kept."""
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from lesionspark.modeling.augment import augment_batch  # noqa: E402  (after the importorskip)


def _symmetries(im):
    out = []
    for flipped in (im, im[:, ::-1]):
        out += [np.rot90(flipped, k) for k in range(4)]
    return out


def test_geometry_only_gives_one_of_the_eight_symmetries_per_image():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 12, 12, 3)).astype(np.float32)
    y = augment_batch(x, tf.random.Generator.from_seed(1), rotation=0, contrast=0, brightness=0).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    chosen = []
    for a, b in zip(x, y):
        match = [i for i, s in enumerate(_symmetries(a)) if np.allclose(s, b, atol=0.05)]
        assert match, "output is not a flip/quarter turn of its input"
        chosen.append(match[0])
    assert len(set(chosen)) >= 4  # per image, not one transform for the whole batch


def test_each_image_gets_its_own_rotation_and_photometric_change():
    im = np.zeros((24, 24, 3), np.float32)
    im[8:16, 4:20] = 200.0  # an off-centre bar: rotations move it
    x = np.repeat(im[None], 32, axis=0)
    y = augment_batch(x, tf.random.Generator.from_seed(2), rotation=0.1, contrast=0.2, brightness=0.2).numpy()
    assert y.min() >= 0 and y.max() <= 255
    distinct = {np.round(a, 1).tobytes() for a in y}
    assert len(distinct) == 32
    assert np.std(y.mean(axis=(1, 2, 3))) > 1.0  # brightness/contrast differ per image


def test_runs_inside_a_dataset_and_changes_every_batch():
    x = np.random.default_rng(3).uniform(0, 255, (8, 16, 16, 3)).astype(np.float32)
    gen = tf.random.Generator.from_seed(4)
    a, b = list(tf.data.Dataset.from_tensors(x).repeat(2).map(lambda t: augment_batch(t, gen)).as_numpy_iterator())
    assert not np.allclose(a, b)
