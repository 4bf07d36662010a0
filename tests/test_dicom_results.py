"""DICOM results for the PACS (``score.dicom_results``): a TID 1500 Structured Report per scored
image of a DICOM object and a FRACTIONAL Segmentation per flagged heatmap, read back with pydicom
and highdicom, checked against the prediction rows, validated by dciodvfy (dicom3tools, an
independent validator), written once per key across reruns and a killed commit."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from commitcrash import stop_at_commit
from conftest import make_cfg, publish_untrained_model
from lesionspark.imaging import dicom_results
from lesionspark.score import driver as score_mod
from lesionspark.score.driver import score
from test_dicom import FILES, IDENTITY, MULTIFRAME_TRUE_COLOUR_SC, _all_text, _retyped, dicom_from_jpeg

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
from pydicom.uid import generate_uid  # noqa: E402

DCIODVFY = Path(sys.prefix) / "share" / "lesionspark" / "debs" / "root" / "usr" / "bin" / "dciodvfy"
DERMOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.7"
pytestmark = pytest.mark.spark


def dciodvfy(path: Path) -> list[str]:
    """The validator's error lines for one object (its warnings are not errors)."""
    assert DCIODVFY.exists(), "run scripts/setup.sh: it unpacks dicom3tools (requirements/debs.txt)"
    out = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _archive(genuine_dir: Path, a: Path) -> dict:
    """Sources of every kind: VL Photographic objects built from genuine JPEGs (one with a full
    study module, one with only what the scorer needs), pydicom's own colour files (a Secondary
    Capture, a 2-frame RLE one as a Multi-frame True Colour SC, one retyped as Dermoscopic
    Photography), a plain JPEG, a CT."""
    jpegs = sorted((genuine_dir / "images").glob("*.jpg"))
    study = generate_uid()
    (a / "derm").mkdir(parents=True)
    (a / "derm" / "IMG0001").write_bytes(dicom_from_jpeg(
        jpegs[0].read_bytes(), study, generate_uid(), generate_uid(), StudyDate="20261105", StudyTime="101500",
        StudyID="S1", AccessionNumber="A1", SeriesNumber=1, InstanceNumber=1, ReferringPhysicianName="Ref^Doc"))
    (a / "derm" / "IMG0002").write_bytes(dicom_from_jpeg(jpegs[1].read_bytes(), study, generate_uid(), generate_uid()))
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "CT_small.dcm"):
        shutil.copy(FILES / name, a / name)
    (a / "two-frames.dcm").write_bytes(_retyped("SC_rgb_rle_2frame.dcm", MULTIFRAME_TRUE_COLOUR_SC))
    (a / "dermoscopic.dcm").write_bytes(_retyped("SC_rgb_small_odd.dcm", DERMOSCOPIC))
    shutil.copy(jpegs[2], a / "plain.jpg")
    return {"study": study}


def _objects(root: Path) -> dict:
    return {p.name: p for p in (root / "dicom_results" / "cnn" / "v1").glob("*.dcm")}


@pytest.mark.slow
def test_every_scored_dicom_image_gets_a_report_and_every_flagged_heatmap_a_segmentation(spark, genuine_dir,
                                                                                          tmp_path, monkeypatch):
    a = tmp_path / "archive"
    _archive(genuine_dir, a)
    root = tmp_path / "root"
    publish_untrained_model(root, size=32, calibration={"temperature": 1.5, "split": "val", "objective": "ece"})
    cfg = make_cfg(root, score__archive=str(a), score__model="cnn:v1", score__dicom_results=True,
                   score__explain_flagged=True, evaluate__default_threshold=0.0)  # every image flagged
    stop_at_commit(spark, cfg, monkeypatch)  # a run killed at its commit writes nothing outside its staging
    assert not (root / "dicom_results").exists()
    staged = list((root / "tables" / "_staging" / "stopped" / "dicom").iterdir())
    moves = [0]

    def killed_at_the_second_move():  # ... and one killed inside its commit leaves whole objects that the next run replaces
        moves[0] += 1
        if moves[0] == 3:
            raise KeyboardInterrupt("killed")
    with pytest.raises(KeyboardInterrupt):
        score_mod._commit(f"file://{root}", "stopped", killed_at_the_second_move, None, dicom_dir=f"file://{root}/dicom_results/cnn/v1")
    assert len(_objects(root)) == 1 and len(staged) > 2  # the fence runs before anything, then before each move
    first = score(spark, cfg, run_id="pacs-1")
    assert (first["listed"], first["scored"], first["rejected"], first["images"]) == (7, 6, 1, 7)
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    dicom = preds[preds["sop_instance_uid"].notna()]
    assert len(dicom) == 6 and dicom["dicom_sr_uid"].notna().all()
    # a frame of a multi-frame object: a report per frame (referencing it), no segmentation
    multi = dicom[dicom["image_path"].str.endswith("two-frames.dcm")]
    assert sorted(multi["frame"]) == [1, 2] and multi["dicom_seg_uid"].isna().all()
    assert multi["dicom_note"].str.startswith("no Segmentation for one frame of a multi-frame object").all()
    assert dicom[~dicom["image_path"].str.endswith("two-frames.dcm")]["dicom_note"].isna().all()
    plain = preds[preds["sop_instance_uid"].isna()]
    assert len(plain) == 1 and plain[["dicom_sr_uid", "dicom_seg_uid"]].isna().all(axis=None)  # JPEG: no object
    objects = _objects(root)
    with_maps = dicom[dicom["explanation_path"].notna() & ~dicom["image_path"].str.endswith("two-frames.dcm")]
    assert set(objects) == {f"{u}.dcm" for u in [*dicom["dicom_sr_uid"], *with_maps["dicom_seg_uid"]]}
    assert len(with_maps) >= 1 and with_maps["dicom_seg_uid"].notna().all()
    for path in objects.values():
        assert dciodvfy(path) == [], (path.name, dciodvfy(path))
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: pydicom.dcmread(p, stop_before_pixels=True)
               for p in a.rglob("*") if p.is_file() and p.suffix != ".jpg"}
    for row in dicom.itertuples():
        _check_report(hd.sr.srread(objects[f"{row.dicom_sr_uid}.dcm"]), row, sources[row.sop_instance_uid])
    for row in with_maps.itertuples():
        seg = hd.seg.segread(objects[f"{row.dicom_seg_uid}.dcm"])
        src = sources[row.sop_instance_uid]
        assert (seg.Rows, seg.Columns) == (src.Rows, src.Columns) and seg.StudyInstanceUID == src.StudyInstanceUID
        assert seg.SegmentationType == "FRACTIONAL" and seg.PatientID == src.get("PatientID", "")
        ref = seg.SourceImageSequence if "SourceImageSequence" in seg else \
            seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence
        assert ref[0].ReferencedSOPInstanceUID == row.sop_instance_uid
        if int(src.get("NumberOfFrames", 1)) > 1:
            assert [int(f) for f in np.atleast_1d(ref[0].ReferencedFrameNumber)] == [row.frame]
    # a rerun scores nothing and writes nothing; the tables and the logs never hold the patient
    again = score(spark, cfg, run_id="pacs-2")
    assert again["scored"] == again["images"] == 0 and _objects(root) == objects
    assert not (root / "tables" / "_staging").exists() or not any((root / "tables" / "_staging").iterdir())
    planted = next(p for p in objects.values() if IDENTITY["PatientID"] in p.read_bytes().decode("latin-1"))
    assert planted  # the objects carry the patient module, as DICOM requires ...
    outside = "".join(_all_text(root / d) for d in ("tables", "explanations", "models"))
    for value in IDENTITY.values():  # ... and nothing else under the root does
        assert value not in outside, value


def _check_report(sr, row, source) -> None:
    """The SR's content against its prediction row and source."""
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.get("PatientID", "") and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert isinstance(sr, hd.sr.ComprehensiveSR)  # highdicom reads it back as what it is
    group = _groups(sr)[0]
    values = {m.ConceptNameCodeSequence[0].CodeMeaning: float(m.MeasuredValueSequence[0].NumericValue)
              for m in _items(group, "NUM")}
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    expected = {dicom_results.CLASS_CODES[c][2]: p for c, p in zip(classes, row.probabilities)}
    for meaning, p in expected.items():
        assert abs(values[meaning] - p) < 1e-6, meaning
    assert abs(values["Probability of cancer"] - row.malignant_probability) < 1e-6
    codes = {c.ConceptNameCodeSequence[0].CodeMeaning: c.ConceptCodeSequence[0].CodeMeaning for c in _items(group, "CODE")}
    assert codes["Finding"] == dicom_results.CLASS_CODES[row.predicted_dx][2]
    assert codes["Clinician review recommended"] == ("Yes" if row.review_flag else "No")
    texts = [t.TextValue for t in _items(group, "TEXT")]
    assert any(t.startswith("Research use only; not for diagnosis") for t in texts)
    assert any("T = 1.500" in t for t in texts)  # the card's calibration
    image = next(i for i in _items(group, "IMAGE", deep=True))
    ref = image.ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == row.sop_instance_uid
    if int(source.get("NumberOfFrames", 1)) > 1:
        assert [int(f) for f in np.atleast_1d(ref.ReferencedFrameNumber)] == [row.frame]
    algorithm = {i.ConceptNameCodeSequence[0].CodeMeaning: getattr(i, "TextValue", None)
                 for i in _items(group, "TEXT", deep=True)}
    assert algorithm["Algorithm Name"] == "lesionspark cnn" and algorithm["Algorithm Version"] == "v1"


def _groups(sr) -> list:
    """The Measurement Group containers (TID 1501) of a TID 1500 report."""
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements")
    return [g for g in measurements.ContentSequence if g.ValueType == "CONTAINER"]


def _items(item, value_type: str, deep: bool = False):
    for child in getattr(item, "ContentSequence", []):
        if child.ValueType == value_type:
            yield child
        if deep:
            yield from _items(child, value_type, deep)


def test_uids_are_derived_from_the_source_and_the_model_and_the_root_is_checked():
    a = dicom_results.object_uid("1.2.3.", "sr", "1.2.840.1", 1, "cnn", "v1")
    assert a == dicom_results.object_uid("1.2.3.", "sr", "1.2.840.1", 1, "cnn", "v1") and a.startswith("1.2.3.")
    assert a != dicom_results.object_uid("1.2.3.", "sr", "1.2.840.1", 1, "cnn", "v2") and len(a) <= 64
    for bad in ("1.2.3", "abc.", "1..2.", "01.2.", "1." * 30, None):
        with pytest.raises(ValueError, match="dicom.uid_root"):
            dicom_results.check_root(bad)
    assert dicom_results.check_root("1.2.826.0.1.3680043.8.498.") == dicom_results.EXAMPLE_ROOT


def test_a_heatmap_goes_back_to_the_source_geometry():
    cam = np.zeros((4, 4), np.float32)
    cam[1:3, 1:3] = 1.0
    squash = dicom_results.map_to_source(cam, 30, 60, "squash")
    assert squash.shape == (30, 60) and squash[15, 30] == pytest.approx(1.0) and squash[0, 0] == 0
    crop = dicom_results.map_to_source(cam, 30, 60, "crop")
    assert crop.shape == (30, 60) and crop[:, :15].max() == 0 and crop[:, 45:].max() == 0 and crop[15, 30] > 0.9
