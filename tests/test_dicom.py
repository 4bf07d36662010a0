"""DICOM archives: pydicom's own test files (DCMTK, GDCM and others wrote them, not us), objects
built here from the genuine HAM10000 JPEGs with known identifiers, and a score run over a folder of
both whose tables and logs are searched for the planted patient identity."""
import hashlib
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from doctext import all_docs
from conftest import make_cfg, publish_untrained_model
from lesionspark.imaging.dicom import is_dicom, patient_key, read_frames
from lesionspark.imaging.images import ImageRejected, fit_array
from lesionspark.score.driver import score

pydicom = pytest.importorskip("pydicom")  # in requirements/lock.txt: CI installs it
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.uid import JPEGBaseline8Bit, generate_uid  # noqa: E402

FILES = Path(pydicom.__file__).parent / "data" / "test_files"
MAX_PIXELS = 40_000_000
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
MULTIFRAME_TRUE_COLOUR_SC = "1.2.840.10008.5.1.4.1.1.7.4"
# (file, frames) for photographs; (file, reason) for the rest. The transfer syntaxes the issue
# names: uncompressed, RLE, JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000, deflate.
PHOTOGRAPHS = {"SC_rgb_small_odd.dcm": 1, "SC_rgb_small_odd_big_endian.dcm": 1, "SC_ybr_full_422_uncompressed.dcm": 1,
               "SC_rgb_rle.dcm": 1, "SC_rgb_rle_2frame.dcm": 2, "SC_rgb_rle_16bit_2frame.dcm": 2,
               "SC_rgb_rle_32bit.dcm": 1, "SC_rgb_jpeg_dcmtk.dcm": 1, "SC_rgb_dcmtk_+eb+cy+np.dcm": 1,
               "SC_rgb_jpeg_lossy_gdcm.dcm": 1, "SC_rgb_jpeg_gdcm.dcm": 1, "SC_rgb_jls_lossy_line.dcm": 1,
               "SC_rgb_gdcm_KY.dcm": 1, "GDCMJ2K_TextGBR.dcm": 1, "SC_jpeg_no_color_transform.dcm": 1}
REJECTED = {"CT_small.dcm": "dicom_not_a_photograph", "MR_small_RLE.dcm": "dicom_not_a_photograph",
            "693_J2KI.dcm": "dicom_not_a_photograph", "rtdose.dcm": "dicom_not_a_photograph",
            "rtplan.dcm": "dicom_not_a_photograph", "test-SR.dcm": "dicom_not_a_photograph",
            "waveform_ecg.dcm": "dicom_not_a_photograph", "liver_1frame.dcm": "dicom_not_a_photograph",
            "examples_ybr_color.dcm": "dicom_not_a_photograph",  # ultrasound: not a photograph of skin
            "JPEG2000.dcm": "dicom_monochrome", "JPGExtended.dcm": "dicom_monochrome",
            "JPEGLSNearLossless_08.dcm": "dicom_monochrome", "image_dfl.dcm": "dicom_monochrome",
            "empty_charset_LEI.dcm": "dicom_not_a_photograph"}
# Distinctive values: searched for in every byte written, where short ones ("Doe", "1961") turn up
# by chance in hashes, UIDs and compressed files.
IDENTITY = {"PatientName": "Quixotic^Zebediah", "PatientID": "MRN-0042-X", "PatientBirthDate": "19610203"}


def _retyped(name: str, sop_class: str) -> bytes:
    """A pydicom test file with only its SOP class changed: real pixel data in a photograph's class."""
    ds = pydicom.dcmread(FILES / name)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dicom_from_jpeg(jpeg: bytes, study: str, series: str, instance: str, **tags) -> bytes:
    """A VL Photographic object holding a JPEG's bytes as they are (baseline, YBR_FULL_422)."""
    width, height = Image.open(io.BytesIO(jpeg)).size
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = VL_PHOTOGRAPHIC, instance
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_PHOTOGRAPHIC, instance
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "XC"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = height, width, 3, "YBR_FULL_422"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    for key, value in {**IDENTITY, "PatientAge": "045Y", "PatientSex": "F", "BodyPartExamined": "BACK", **tags}.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("name,frames", sorted(PHOTOGRAPHS.items()))
def test_photographs_decode_to_rgb_frames(name, frames):
    data = (FILES / name).read_bytes()
    assert is_dicom(data)
    out, ids, _, _ = read_frames(data, MAX_PIXELS)
    assert len(out) == frames and all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in out)
    assert ids["sop_instance_uid"] and ids["patient_key"] is None  # no salt, no patient key


def test_every_encoding_of_the_same_picture_gives_the_same_pixels():
    """DCMTK and GDCM wrote one 100x100 test picture in many syntaxes and colour spaces: each
    decodes to the lossless RLE one (exactly, or within JPEG's loss)."""
    reference = read_frames((FILES / "SC_rgb_rle.dcm").read_bytes(), MAX_PIXELS)[0][0].astype(int)
    lossless = ["SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_gdcm_KY.dcm"]
    for name in lossless:
        frames = read_frames((FILES / name).read_bytes(), MAX_PIXELS)[0]
        assert np.abs(frames[0].astype(int) - reference).max() <= 1, name
        if len(frames) == 2:  # the second frame of the two-frame files is the first one inverted
            assert np.abs(frames[1].astype(int) - (255 - reference)).max() <= 1, name
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm",
                 "SC_rgb_jls_lossy_line.dcm", "SC_ybr_full_422_uncompressed.dcm"):  # 4:2:2 halves the chroma
        frame = read_frames((FILES / name).read_bytes(), MAX_PIXELS)[0][0]
        assert np.abs(frame.astype(int) - reference).mean() < 6, name


@pytest.mark.parametrize("name,reason", sorted(REJECTED.items()))
def test_what_is_not_a_colour_photograph_is_a_reject_with_a_reason(name, reason):
    with pytest.raises(ImageRejected) as rej:
        read_frames((FILES / name).read_bytes(), MAX_PIXELS)
    assert rej.value.code == reason


def test_palette_multiframe_broken_and_oversized_objects():
    # Real palette and 30-frame YBR pixel data, in a photograph's SOP class
    palette, _, _, _ = read_frames(_retyped("examples_palette.dcm", VL_PHOTOGRAPHIC), MAX_PIXELS)
    source = pydicom.dcmread(FILES / "examples_palette.dcm")
    assert len(palette) == 1 and palette[0].shape == (source.Rows, source.Columns, 3)
    assert len(set(map(tuple, palette[0].reshape(-1, 3)[::97]))) > 10  # colours, not a grey ramp
    video_bytes = _retyped("examples_ybr_color.dcm", MULTIFRAME_TRUE_COLOUR_SC)
    video, _, _, _ = read_frames(video_bytes, MAX_PIXELS)
    assert len(video) == 30 and not np.array_equal(video[0], video[15])
    frame_pixels = video[0].shape[0] * video[0].shape[1]
    with pytest.raises(ImageRejected) as rej:  # each frame within the guard, the 30 of them not
        read_frames(video_bytes, max_pixels=frame_pixels)
    assert rej.value.code == "too_many_pixels"
    data = (FILES / "SC_rgb_rle_2frame.dcm").read_bytes()
    assert len(read_frames(data, max_pixels=100 * 100)[0]) == 2
    with pytest.raises(ImageRejected) as rej:
        read_frames(data, max_pixels=100 * 100 - 1)
    assert rej.value.code == "too_many_pixels"
    for cut in (100, 700):  # truncated in the pixel data, or before it
        with pytest.raises(ImageRejected) as rej:
            read_frames(data[: len(data) - cut], MAX_PIXELS)
        assert rej.value.code in ("dicom_undecodable", "dicom_no_pixel_data"), cut


def test_crafted_objects_are_rejects_never_errors():
    """A deflate bomb (a real deflated object's header before 64 MiB of zeros, 64 KiB on disk) is
    refused before pydicom inflates it; 400 seeded byte mutations of real objects each end as frames
    or a reject, never as another exception (which would fail the scoring task)."""
    import zlib
    real = (FILES / "image_dfl.dcm").read_bytes()
    start = 144 + int.from_bytes(real[140:144], "little")
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = real[:start] + packer.compress(bytes(64 << 20)) + packer.flush()
    assert len(bomb) < 100_000
    with pytest.raises(ImageRejected) as rej:
        read_frames(bomb, max_pixels=1_000_000, max_bytes=16 << 20)
    assert rej.value.code == "over_memory_budget"
    rng = np.random.default_rng(7)
    outcomes = set()
    for name in ("SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm", "examples_palette.dcm"):
        data = (FILES / name).read_bytes()
        for _ in range(100):
            mutated = bytearray(data)
            for at in rng.integers(132, len(data), int(rng.integers(1, 8))):
                mutated[at] = int(rng.integers(0, 256))
            try:
                read_frames(bytes(mutated), MAX_PIXELS)
                outcomes.add("frames")
            except ImageRejected as rej:
                outcomes.add(rej.code)
    assert "frames" in outcomes and len(outcomes) > 2, outcomes


def test_a_dermoscopy_object_made_from_a_genuine_jpeg_decodes_like_the_jpeg(genuine_dir):
    jpeg = sorted((genuine_dir / "images").glob("*.jpg"))[0].read_bytes()
    study, series, instance = generate_uid(), generate_uid(), generate_uid()
    data = dicom_from_jpeg(jpeg, study, series, instance)
    frames, ids, _, _ = read_frames(data, MAX_PIXELS, salt="s3cret")
    assert ids == {"study_uid": study, "series_uid": series, "sop_instance_uid": instance, "modality": "XC",
                   "patient_key": hashlib.sha256(b"s3cretMRN-0042-X").hexdigest()}
    plain = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=int)
    assert frames[0].shape == plain.shape and np.abs(frames[0].astype(int) - plain).mean() < 2
    assert fit_array(frames[0], 32).shape == (32, 32, 3)
    assert patient_key("MRN-0042-X", None) is None and patient_key("  ", "s") is None


def _all_text(root: Path) -> str:
    """Every value of every table under ``root``, as text, and every file's raw bytes."""
    parts = []
    for path in root.rglob("*"):
        if path.is_file():
            parts.append(path.read_bytes().decode("latin-1"))
            if path.suffix == ".parquet":
                parts.append(pq.read_table(str(path)).to_pandas().astype(str).to_csv())
    return "\n".join(parts)


@pytest.mark.spark
def test_a_dicom_archive_is_scored_frame_by_frame_and_linked_to_its_studies(spark, genuine_dir, tmp_path, caplog):
    a = tmp_path / "archive"
    (a / "pacs").mkdir(parents=True)
    (a / "derm").mkdir()
    for name in ("SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "CT_small.dcm", "test-SR.dcm", "JPEG2000.dcm"):
        shutil.copy(FILES / name, a / "pacs" / name)
    jpegs = sorted((genuine_dir / "images").glob("*.jpg"))[:3]
    study, built = generate_uid(), {}
    for i, jpeg in enumerate(jpegs[:2]):  # no extension, as PACS exports often are
        series, instance = generate_uid(), generate_uid()
        (a / "derm" / f"IMG{i:04d}").write_bytes(dicom_from_jpeg(jpeg.read_bytes(), study, series, instance))
        built[instance] = series
    shutil.copy(jpegs[2], a / "plain.jpg")
    root = tmp_path / "root"
    publish_untrained_model(root, size=32)
    cfg = make_cfg(root, score__archive=str(a), score__model="cnn:latest", score__path_salt="s3cret",
                   archive__path_regex=r"(\.(jpe?g|png|dcm)|/img\d+)$",  # matched lower-cased
                   evaluate__default_threshold=0.0)  # every image flagged: the docs' worklist query sees them
    with caplog.at_level(logging.INFO):
        summary = score(spark, cfg, run_id="dicom-1")
        again = score(spark, cfg, run_id="dicom-2")
    assert (summary["listed"], summary["scored"], summary["rejected"], summary["images"]) == (8, 5, 3, 6)
    assert again["scored"] == again["rejected"] == again["images"] == 0  # the rerun finds everything done
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    two = preds[preds["image_path"].str.endswith("SC_rgb_rle_2frame.dcm")]
    assert sorted(two["frame"]) == [1, 2] and two["image_sha256"].nunique() == 1
    ours = preds[preds["sop_instance_uid"].isin(list(built))]
    assert len(ours) == 2 and set(ours["study_uid"]) == {study} and set(ours["modality"]) == {"XC"}
    assert {r.sop_instance_uid: r.series_uid for r in ours.itertuples()} == built
    assert set(ours["patient_key"]) == {hashlib.sha256(b"s3cretMRN-0042-X").hexdigest()}
    plain = preds[preds["image_path"].str.endswith("plain.jpg")].iloc[0]
    assert pd_isna(plain["frame"]) and plain["study_uid"] is None
    rejects = pq.read_table(str(root / "tables" / "score_rejects")).to_pandas()
    assert {p.rsplit("/", 1)[1]: r for p, r in zip(rejects["image_path"], rejects["reason"])} == {
        "CT_small.dcm": "dicom_not_a_photograph", "test-SR.dcm": "dicom_not_a_photograph",
        "JPEG2000.dcm": "dicom_monochrome"}
    assert len(pq.read_table(str(root / "tables" / "score_files"))) == 8  # one index row per file
    # the docs' query joining predictions to studies
    import re
    from lesionspark.sql.query import register
    register(spark, str(root))
    readme = all_docs()
    query = next(b for b in re.findall(r"```sql\n(.*?)```", readme, re.S) if "study_uid" in b)
    worklist = spark.sql(query).toPandas()
    assert set(built) <= set(worklist["sop_instance_uid"]) and worklist["study_uid"].notna().all()
    # explain: an overlay per frame, named by frame
    from lesionspark.explain.driver import explain
    with caplog.at_level(logging.INFO):
        shown = explain(spark, cfg.with_overrides({"explain.images": str(a), "explain.model": "cnn:latest"}))
    table = pq.read_table(shown["table"][len("file://"):]).to_pandas()
    assert (shown["images"], shown["explained"], shown["rejected"]) == (8, 6, 3)
    frames = sorted(i.rsplit("-", 1)[1] for i in table["image"] if i.startswith("SC_rgb_rle_2frame-"))
    assert frames == ["f1", "f2"]
    # The planted identity is in the archive and nowhere under the root, nor in any log line.
    assert IDENTITY["PatientID"] in _all_text(a)
    written = _all_text(root) + caplog.text
    for value in (*IDENTITY.values(), "Quixotic", "Zebediah"):
        assert value not in written, value


def pd_isna(value) -> bool:
    import pandas as pd
    return bool(pd.isna(value))


@pytest.mark.spark
def test_ingest_takes_single_frame_dicom_photographs_as_records(spark, genuine_dir, tmp_path):
    """A HAM10000 layout where some images arrive as DICOM: a photograph made from the genuine JPEG
    becomes the same record as the JPEG would (to JPEG decoder differences); a two-frame object and
    a CT named after image ids are rejects with their reasons."""
    import pandas as pd
    from lesionspark.imaging.images import decode_resize
    from lesionspark.ingest.driver import ingest
    from lesionspark.dataset.schema import lesion_schema
    from lesionspark.store.layout import Layout
    meta = pd.read_csv(genuine_dir / "HAM10000_metadata.csv")
    jpegs = {p.stem: p for p in sorted((genuine_dir / "images").glob("*.jpg"))[:6]}
    rows = meta[meta["image_id"].isin(list(jpegs))]
    images = tmp_path / "images"
    images.mkdir()
    ids = sorted(jpegs)
    for i in ids[:3]:
        shutil.copy(jpegs[i], images / f"{i}.jpg")
    as_dicom = ids[3]
    (images / f"{as_dicom}.dcm").write_bytes(dicom_from_jpeg(jpegs[as_dicom].read_bytes(), generate_uid(),
                                                             generate_uid(), generate_uid()))
    shutil.copy(FILES / "SC_rgb_rle_2frame.dcm", images / f"{ids[4]}.dcm")
    shutil.copy(FILES / "CT_small.dcm", images / f"{ids[5]}.dcm")
    rows.to_csv(tmp_path / "meta.csv", index=False)
    root = tmp_path / "root"
    cfg = make_cfg(root, ingest__metadata=str(tmp_path / "meta.csv"), ingest__images=[str(images)],
                   dataset__image_size=32, ingest__split={"train": 1.0, "val": 0.0, "test": 0.0})
    manifest = ingest(spark, cfg)
    assert manifest["counts"]["written"] == 4 and manifest["counts"]["rejected"] == 2
    rejects = pq.read_table(str(root / "datasets" / "ham10000" / "rejects")).to_pandas()
    assert dict(zip(rejects["image_id"], rejects["reason"])) == {ids[4]: "dicom_multiframe",
                                                                  ids[5]: "dicom_not_a_photograph"}
    split = pq.read_table(Layout(str(root)).split("ham10000", "train")[len("file://"):],
                          columns=["image_id", "source", "image"]).to_pandas().set_index("image_id")
    assert sorted(split.index) == sorted(set(ids[:4])) and split.loc[as_dicom, "source"].endswith(".dcm")
    field = lesion_schema(32).fields["image"]
    record = field.codec.decode(field, split.loc[as_dicom, "image"])  # as Petastorm's reader decodes it
    as_jpeg = decode_resize(jpegs[as_dicom].read_bytes(), 32)
    assert record.shape == (32, 32, 3) and np.abs(record.astype(int) - as_jpeg.astype(int)).mean() < 6


@pytest.mark.spark
def test_a_pacs_export_with_a_dicomdir_is_scored_as_it_is_with_the_defaults(spark, genuine_dir, tmp_path):
    """DICOM media as PACS export them (PS3.10: file IDs without an extension under a DICOMDIR),
    scored with no option set: every object scored, the DICOMDIR one row that is not a failed image."""
    from pydicom.fileset import FileSet
    media, study = FileSet(), generate_uid()
    for jpeg in sorted((genuine_dir / "images").glob("*.jpg"))[:6]:
        data = dicom_from_jpeg(jpeg.read_bytes(), study, generate_uid(), generate_uid(), StudyDate="20261105",
                               StudyTime="101500", StudyID="S1", AccessionNumber="A1", SeriesNumber=1, InstanceNumber=1)
        media.add(pydicom.dcmread(io.BytesIO(data)))  # what the STUDY, SERIES and IMAGE records need
    export = tmp_path / "export"
    media.write(str(export))
    files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
    assert len(files) == 7 and "DICOMDIR" in files and not any("." in f for f in files), files
    root = tmp_path / "root"
    publish_untrained_model(root, size=32)
    summary = score(spark, make_cfg(root, score__archive=str(export), score__model="cnn:v1"), run_id="media")
    assert (summary["listed"], summary["scored"], summary["rejected"], summary["images"]) == (7, 6, 1, 6)
    rejects = pq.read_table(str(root / "tables" / "score_rejects")).to_pandas()
    assert list(rejects["reason"]) == ["dicom_directory"] and rejects["image_path"].iloc[0].endswith("/DICOMDIR")
    # one PATIENT, one STUDY, a SERIES and an IMAGE record per object
    assert rejects["detail"].iloc[0].startswith("a DICOMDIR, the index of a DICOM export: 14 records, 6 of them images")
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    assert len(preds) == 6 and set(preds["study_uid"]) == {study}
