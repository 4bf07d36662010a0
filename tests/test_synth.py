"""Generated data follows the genuine metadata and carries a learnable, lesion-correlated signal."""
import numpy as np
import pandas as pd

from lesionspark.core.classes import CLASSES
from lesionspark.imaging.images import decode_resize
from lesionspark.imaging.synth import genuine_metadata, lesion_params, render, sample_rows


def test_synth_layout_follows_genuine_metadata(synth_small):
    meta = pd.read_csv(synth_small["metadata"])
    genuine = genuine_metadata()
    merged = meta.astype(str).merge(genuine.astype(str).replace("", "nan"), how="left", indicator=True)
    assert (merged["_merge"] == "both").all()  # every row is a genuine row, unchanged
    assert set(meta["dx"]) == set(CLASSES)
    assert synth_small["genuine"] == 56
    lesions = meta.groupby("lesion_id")["image_id"].count()
    assert lesions.max() > 1  # repeated images per lesion are kept
    assert synth_small["per_class"]["nv"] == max(synth_small["per_class"].values())


def test_sampling_keeps_whole_lesions_and_all_rows_when_asked():
    genuine = genuine_metadata()
    rows = sample_rows(genuine, 300, seed=1)
    whole = genuine[genuine["lesion_id"].isin(rows["lesion_id"])]
    assert len(whole) == len(rows)
    assert len(sample_rows(genuine, 20000, seed=1)) == 10015


def test_same_lesion_images_are_closer_than_other_lesions_of_the_class():
    def image(lesion, dx, key):
        return render(lesion_params(lesion, dx, 0), key, 0, 120, 90).astype(float)
    same, other = [], []
    for i in range(6):
        a = image(f"L{i}", "mel", "a")
        same.append(np.abs(a - image(f"L{i}", "mel", "b")).mean())
        other.append(np.abs(a - image(f"L{i + 100}", "mel", "c")).mean())
    assert np.mean(same) < 0.75 * np.mean(other)


def test_classes_differ_on_average_but_overlap():
    # Mean lesion colour separates classes on average, with spread within each class.
    means = {}
    for dx in CLASSES:
        cols = [render(lesion_params(f"{dx}{i}", dx, 0), "x", 0, 120, 90)[30:60, 45:75].reshape(-1, 3).mean(0)
                for i in range(8)]
        means[dx] = (np.mean(cols, 0), np.std(cols, 0).mean())
    assert np.linalg.norm(means["vasc"][0] - means["nv"][0]) > 20
    assert all(spread > 3 for _, spread in means.values())


def test_generated_jpegs_decode(synth_small):
    import os
    folder = synth_small["images"][0]
    name = sorted(os.listdir(folder))[0]
    with open(os.path.join(folder, name), "rb") as fh:
        assert decode_resize(fh.read(), 64).shape == (64, 64, 3)
