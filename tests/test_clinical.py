"""Age, sex and anatomic site as model inputs: the encoding, the fused models, the balance rows that
carry them, and a metadata model scoring a mixed archive (DICOM tags, a side-car CSV, nothing)."""
import json
import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lesionspark.dataset import clinical
from lesionspark.balance.executor import inherited_metadata
from lesionspark.imaging.frames import Image
from lesionspark.inference.predictor import file_metadata, image_metadata

from doctext import all_docs
from conftest import make_cfg, publish_untrained_model

FIELDS = ("age", "sex", "localization")


def test_each_field_is_one_hot_with_missing_as_its_own_category():
    rows = [{"age": 45, "sex": "male", "localization": "back"}, {"age": "85", "sex": "F", "localization": "Upper limb"},
            {"age": None, "sex": "unknown", "localization": "unknown"}, {}, {"age": float("nan"), "sex": "O"}]
    vectors, used = clinical.encode(FIELDS, rows)
    assert vectors.shape == (5, clinical.width(FIELDS)) == (5, 10 + 3 + 15)
    assert (vectors.sum(axis=1) == 3).all()  # exactly one category per field
    assert used[0] == {"age": "40-49", "sex": "male", "localization": "back"}
    assert used[1] == {"age": "80+", "sex": "female", "localization": "upper extremity"}
    assert used[2] == used[3] == used[4] == dict.fromkeys(FIELDS)
    assert (vectors[2] == vectors[3]).all() and (vectors[3] == vectors[4]).all()
    assert [clinical.missing(u) for u in used[:3]] == ["", "", "age,sex,localization"]
    # a subset of fields, always in FIELDS order
    assert clinical.check_fields(["localization", "age"]) == ("age", "localization")
    assert clinical.encode(["sex"], rows[:1])[0].tolist() == [[1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="weight"):
        clinical.check_fields(["age", "weight"])


def test_dicom_values_and_side_car_rows():
    assert [clinical.dicom_age(v) for v in ("045Y", "006M", "052W", "030D", "", None, "45", "999X")] == \
        [45, 0.5, pytest.approx(52 / 52.18), pytest.approx(30 / 365.25), None, None, None, None]
    text = "image_id,age,sex,localization,other\nISIC_1,50,female,face,x\n ISIC_2 ,,male,\n,1,male,back\n"
    assert clinical.read_sidecar(text) == {"ISIC_1": {"age": "50", "sex": "female", "localization": "face"},
                                           "ISIC_2": {"sex": "male"}}
    with pytest.raises(ValueError, match="image_id"):
        clinical.read_sidecar("id,age\n1,2\n")
    with pytest.raises(ValueError, match="twice"):
        clinical.read_sidecar("image_id,age\na,1\na,2\n")
    assert clinical.sidecar_key("s3a://b/x/ISIC_1.JPG") == "ISIC_1" and clinical.sidecar_key("/p/IMG0001") == "IMG0001"


def test_a_side_car_that_is_not_a_readable_csv_is_a_clear_error_before_any_work(tmp_path):
    import os
    from lesionspark.core.config import ConfigError
    fifo, loop, big = tmp_path / "fifo.csv", tmp_path / "loop.csv", tmp_path / "big.csv"
    os.mkfifo(fifo)  # opening it would block until a writer came
    loop.symlink_to(loop)
    big.write_text("image_id,age\na," + "9" * (1 << 18) + "\n")  # a field past the csv module's limit
    cases = {fifo: "not a regular file", tmp_path: "not a regular file", loop: "",
             tmp_path / "gone.csv": "not a regular file"}
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=f"archive.metadata_csv: .*{message}"):
            clinical.load_sidecar(str(path), FIELDS)
    assert clinical.load_sidecar(str(big), FIELDS) == {}  # its one line skipped alone (test_hostile_csv)
    good = tmp_path / "ok.csv"
    good.write_bytes(b"\xef\xbb\xbfimage_id,sex\nx,\xff\n")  # a BOM and an undecodable byte
    assert clinical.load_sidecar(str(good), FIELDS) == {"x": {"sex": "\ufffd"}}
    assert clinical.load_sidecar(str(good), ()) is None and clinical.load_sidecar(None, FIELDS) is None


def test_a_dicom_objects_own_tags_come_first_then_the_side_car():
    card = {"metadata": list(FIELDS)}
    batch = pd.DataFrame({"path": ["/a/ISIC_1.jpg", "/a/obj.dcm", "/a/none.jpg"]})
    per_file = file_metadata(card, batch, "path", {"ISIC_1": {"age": "50", "sex": "female"},
                                                   "obj": {"age": "20", "localization": "face"}})
    images = [Image(0, None, None, None, None, {}, {}),
              Image(1, 1, None, None, None, {}, {"age": 70.0, "sex": "M", "localization": None}),
              Image(2, None, None, None, None, {}, {})]
    vectors, used = image_metadata(card, images, per_file)
    assert used == [{"age": "50-59", "sex": "female", "localization": None},
                    {"age": "70-79", "sex": "male", "localization": "face"}, dict.fromkeys(FIELDS)]
    assert vectors.shape == (3, clinical.width(FIELDS))
    # dataset records bring their own columns; an image-only card needs nothing
    records = pd.DataFrame({"path": ["i"], "age": [55.0], "sex": ["male"], "localization": ["back"]})
    assert file_metadata(card, records, "path", {"i": {"age": "20"}}) == [{"age": 55.0, "sex": "male",
                                                                           "localization": "back"}]
    assert image_metadata({}, images, [{}] * 3) == (None, [None] * 3)


def test_synthetic_rows_inherit_their_parents_metadata():
    pdf = pd.DataFrame({"age": [40.0, 60.0, np.nan], "sex": ["male", "female", "male"],
                        "localization": ["back", "face", "trunk"]})
    out = inherited_metadata(pdf, [0, 1, 2, 0], [1, 0, 0, 2], np.array([0.5, 0.25, 0.5, 0.5]))
    assert out["age"][:2].tolist() == [50.0, 55.0] and np.isnan(out["age"][2]) and out["age"][3] == 40.0
    assert list(out["sex"]) == ["male", "female", "male", "male"]
    assert list(out["localization"]) == ["back", "face", "trunk", "back"]


@pytest.mark.parametrize("arch", ["cnn", pytest.param("efficientnet", marks=pytest.mark.slow)])
def test_a_fused_model_uses_its_metadata_and_explains_the_image(arch, tmp_path):
    import tensorflow as tf
    from lesionspark.modeling.gradcam import heatmaps
    from lesionspark.modeling.models import build, model_inputs, takes_metadata
    tf.keras.utils.set_random_seed(1)
    model = build(arch, 32, 7, {"filters": [8, 16, 16], "dense": 16} if arch == "cnn" else {},
                  clinical.width(FIELDS))
    assert takes_metadata(model) and not takes_metadata(build("cnn", 32, 7, {"filters": [8], "dense": 8}))
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    known, _ = clinical.encode(FIELDS, [{"age": 70, "sex": "male", "localization": "back"}] * 4)
    unknown, _ = clinical.encode(FIELDS, [{}] * 4)
    p_known = model.predict(model_inputs(model, x, known), verbose=0)
    assert not np.allclose(p_known, model.predict(model_inputs(model, x, unknown), verbose=0))
    with pytest.raises(ValueError, match="metadata"):
        model_inputs(model, x)
    cams, probs = heatmaps(model, x, metadata=known)
    assert cams.shape == (4, 32, 32) and np.allclose(probs, p_known, atol=1e-5)
    if arch != "cnn":
        return
    # saved and loaded as scoring loads it (safe mode), the two inputs intact
    model.save(str(tmp_path / "m.keras"))
    again = tf.keras.models.load_model(str(tmp_path / "m.keras"), compile=False, safe_mode=True)
    assert np.allclose(again.predict(model_inputs(again, x, known), verbose=0), p_known, atol=1e-6)


@pytest.mark.spark
def test_a_metadata_model_scores_an_archive_from_tags_a_side_car_or_nothing(spark, genuine_dir, tmp_path, caplog):
    """Four images: a DICOM object whose tags give all three fields, the same pixels with no tags,
    a JPEG in the side-car CSV and one that is not. The same picture scored with and without its
    metadata gets different probabilities; each row says what the model was given."""
    from pydicom.uid import generate_uid
    from lesionspark.explain.driver import explain
    from lesionspark.score.driver import score
    from test_dicom import dicom_from_jpeg
    a = tmp_path / "archive"
    a.mkdir()
    jpegs = sorted((genuine_dir / "images").glob("*.jpg"))[:3]
    study = generate_uid()
    tagged = dicom_from_jpeg(jpegs[0].read_bytes(), study, generate_uid(), generate_uid(), PatientAge="072Y",
                             PatientSex="M", BodyPartExamined="LEG")
    bare = dicom_from_jpeg(jpegs[0].read_bytes(), study, generate_uid(), generate_uid(), PatientAge="",
                           PatientSex="", BodyPartExamined="")
    (a / "tagged.dcm").write_bytes(tagged)
    (a / "bare.dcm").write_bytes(bare)
    (a / "listed.jpg").write_bytes(jpegs[1].read_bytes())
    (a / "unlisted.jpg").write_bytes(jpegs[2].read_bytes())
    (tmp_path / "sidecar.csv").write_text("image_id,age,sex,localization\nlisted,35,female,face\n")
    root = tmp_path / "root"
    publish_untrained_model(root, size=32, metadata=list(FIELDS), metadata_encoding=clinical.ENCODING)
    cfg = make_cfg(root, score__archive=str(a), archive__metadata_csv=str(tmp_path / "sidecar.csv"))
    with caplog.at_level(logging.INFO):
        summary = score(spark, cfg, run_id="meta-1")
    assert (summary["scored"], summary["rejected"]) == (4, 0)
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    by = {p.rsplit("/", 1)[1]: r for p, r in zip(preds["image_path"], preds.itertuples())}
    assert (by["tagged.dcm"].metadata_missing, by["tagged.dcm"].age_group, by["tagged.dcm"].sex,
            by["tagged.dcm"].localization) == ("", "70-79", "male", "lower extremity")
    assert by["bare.dcm"].metadata_missing == "age,sex,localization" and by["bare.dcm"].age_group is None
    assert (by["listed.jpg"].metadata_missing, by["listed.jpg"].age_group) == ("", "30-39")
    assert by["unlisted.jpg"].metadata_missing == "age,sex,localization"
    assert not np.allclose(by["tagged.dcm"].probabilities, by["bare.dcm"].probabilities)
    assert "072Y" not in caplog.text
    # the docs' query of what the model was given
    import re
    from lesionspark.sql.query import register
    register(spark, str(root))
    readme = all_docs()
    query = next(b for b in re.findall(r"```sql\n(.*?)```", readme, re.S) if "metadata_missing" in b)
    given = spark.sql(query).toPandas()
    assert dict(zip(given["missing"], given["images"])) == {"none": 2, "age,sex,localization": 2}
    # explain over the same folder feeds the model the same inputs: the same predicted classes
    shown = explain(spark, cfg.with_overrides({"explain.images": str(a), "explain.model": "cnn:latest"}))
    table = pq.read_table(shown["table"][len("file://"):]).to_pandas()
    classes = json.loads((root / "models" / "cnn" / "v1" / "model_card.json").read_text())["classes"]
    expected = {k: classes[int(np.argmax(r.probabilities))] for k, r in by.items()}
    assert {p.rsplit("/", 1)[1]: d for p, d in zip(table["source_path"], table["predicted_dx"])} == expected
