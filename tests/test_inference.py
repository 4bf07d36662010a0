"""The inference spec the driver builds for score, evaluate and explain: typed, frozen, picklable,
and read from the shared configuration sections."""
import dataclasses
import pickle

import pytest

from lesionspark.core.config import Config
from lesionspark.inference.spec import InferSpec, build

CARD = {"name": "cnn", "version": "v1", "classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
        "image_size": 32, "resize": "crop", "preprocessing": "scale01"}


def test_the_spec_takes_the_shared_sections():
    cfg = Config.load(overrides=["inference.batch_size=8", "inference.threads=2", "inference.heatmap=gradcam",
                                 "limits.max_image_pixels=1000", "archive.max_file_bytes=99"])
    spec = build(cfg, CARD, "file:///m/model.keras")
    assert (spec.batch_size, spec.threads, spec.heatmap, spec.max_pixels, spec.max_file_bytes) == (8, 2, "gradcam", 1000, 99)
    assert (spec.size, spec.resize, spec.classes) == (32, "crop", CARD["classes"])
    assert spec.max_decoded == Config.load().get("limits.max_decoded_bytes")


def test_the_spec_is_frozen_and_travels_by_pickle():
    spec = build(Config.load(), CARD, "file:///m/model.keras")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batch_size = 1
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert [f.name for f in dataclasses.fields(InferSpec)] == ["model_uri", "card", "batch_size", "threads", "heatmap",
                                                              "max_pixels", "max_decoded", "max_file_bytes"]


def test_an_old_key_name_reaches_the_spec():
    spec = build(Config.load(overrides=["score.batch_size=5"]), CARD, "file:///m/model.keras")
    assert spec.batch_size == 5
