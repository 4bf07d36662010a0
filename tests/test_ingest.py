"""Ingest with real local Spark and real Petastorm files, on generated + genuine images and on
every kind of bad input: each input is written or rejected with its reason."""
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_cfg
from lesionspark.store import storage
from lesionspark.store.layout import Layout
from lesionspark.store import publishing
from lesionspark.ingest.driver import ingest

pytestmark = pytest.mark.spark
SIZE = 64


def _save(path: Path, img: Image.Image, fmt: str = "JPEG", **kw) -> None:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def messy(synth_small, tmp_path_factory):
    """The synth layout plus bad rows and bad files; returns (cfg overrides, expectations)."""
    base = tmp_path_factory.mktemp("messy")
    gen = Path(synth_small["images"][0])
    real = Path(synth_small["images"][1])
    extra = base / "extra"
    extra.mkdir()
    rng = np.random.default_rng(0)
    lesion = Image.new("RGB", (600, 450), (220, 180, 160))
    lesion.paste((120, 80, 60), (200, 150, 400, 300))
    _save(extra / "GRAY_1.jpg", lesion.convert("L"))
    _save(extra / "CMYK_1.jpg", lesion.convert("CMYK"))
    _save(extra / "PNGJPG_1.jpg", lesion, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 8
    _save(extra / "EXIF_1.jpg", lesion, exif=exif.tobytes())
    (extra / "EMPTY_1.jpg").write_bytes(b"")
    full = (real / sorted(os.listdir(real))[0]).read_bytes()
    (extra / "TRUNC_1.jpg").write_bytes(full[: len(full) // 3])
    (extra / "TEXT_1.jpg").write_text("lesion_id,image_id,dx\nnot an image\n")
    _save(extra / "GIF_1.jpg", lesion, "GIF")
    _save(extra / "BIG_1.png", Image.fromarray(rng.integers(0, 255, (1000, 1200, 3), dtype=np.uint8)), "PNG")
    _save(extra / "BOMB_1.jpg", Image.new("RGB", (3000, 2000), (200, 150, 120)))
    _save(extra / "ORPHAN_1.jpg", lesion)
    (extra / "notes.txt").write_text("not part of the dataset")
    (extra / "nested" / "deeper").mkdir(parents=True)
    _save(extra / "nested" / "deeper" / "NESTED_1.jpeg", lesion)
    _save(extra / "BADDX_1.jpg", lesion)
    first_generated = sorted(os.listdir(gen))[0]
    shutil.copy(gen / first_generated, extra / first_generated)   # same image id in two folders

    meta = pd.read_csv(synth_small["metadata"], dtype=str, keep_default_na=False)
    row = "HAM_X{i},{id},{dx},histo,45,female,back"
    good_ids = ["GRAY_1", "CMYK_1", "PNGJPG_1", "EXIF_1", "NESTED_1"]
    bad_ids = {"EMPTY_1": "empty_file", "TRUNC_1": "truncated_or_corrupt", "TEXT_1": "not_an_image",
               "GIF_1": "unsupported_format", "BIG_1": "file_too_large", "BOMB_1": "too_many_pixels",
               "MISSING_1": "image_missing"}
    lines = [row.format(i=i, id=x, dx="nv") for i, x in enumerate(good_ids + list(bad_ids))]
    lines += ["HAM_X90,BADDX_1,melanoma,histo,45,female,back",          # unknown dx
              "HAM_X91,BROKEN_1,nv,histo",                              # malformed row
              ",".join(meta.iloc[0])]                                   # identical repeat
    meta_path = base / "HAM10000_metadata.csv"
    meta_path.write_text(meta.to_csv(index=False) + "\n".join(lines) + "\n")
    expected = {
        "written": len(meta) + len(good_ids),
        "rejects": {**bad_ids, "BADDX_1": "unknown_dx", "BROKEN_1": "malformed_csv_row",
                    meta.iloc[0]["image_id"]: "duplicate_image_id", "ORPHAN_1": "no_metadata_row",
                    "notes": "no_metadata_row", first_generated[:-4]: "duplicate_image_file"},
        "inputs": len(meta) + len(lines) + 3,  # rows + orphan, notes.txt, second copy
        "good_ids": good_ids,
    }
    keys = {"ingest__metadata": str(meta_path), "ingest__images": [str(gen), str(real), str(extra)],
            "dataset__image_size": SIZE, "ingest__max_file_bytes": 3_000_000,
            "limits__max_image_pixels": 5_000_000, "ingest__rows_per_file": 100}
    return keys, expected


@pytest.fixture(scope="module")
def ingested(spark, messy, tmp_path_factory):
    keys, expected = messy
    root = tmp_path_factory.mktemp("root")
    cfg = make_cfg(root, **keys)
    manifest = ingest(spark, cfg, run_id="run-1")
    return cfg, manifest, expected, Layout(str(root))


def _read_split(url):
    from petastorm import make_reader
    with make_reader(url, num_epochs=1, reader_pool_type="dummy", shuffle_row_groups=False) as reader:
        return list(reader)


def test_every_input_is_written_or_rejected(ingested):
    cfg, manifest, expected, layout = ingested
    counts = manifest["counts"]
    assert counts["written"] == expected["written"]
    assert manifest["inputs"]["total"] == expected["inputs"]
    assert counts["written"] + counts["rejected"] == expected["inputs"]
    rejects = pq.read_table(layout.rejects("ham10000").replace("file://", "")).to_pandas()
    got = dict(zip(rejects["image_id"].fillna("?"), rejects["reason"]))
    got.pop("?", None)
    broken = rejects[rejects["reason"] == "malformed_csv_row"]
    assert broken["image_id"].tolist() == ["BROKEN_1"]
    assert {k: got.get(k) for k in expected["rejects"]} == expected["rejects"]
    assert rejects["detail"].notna().all() and (rejects["run_id"] == "run-1").all()
    assert len(rejects) == counts["rejected"]
    for _, dup in rejects[rejects["reason"] == "duplicate_image_file"].iterrows():  # names the copy used
        used = dup["detail"].split("was used: ", 1)[1]
        assert used < dup["source"] and used.rsplit("/", 1)[1].startswith(dup["image_id"])


def test_splits_are_petastorm_datasets_grouped_by_lesion(ingested):
    cfg, manifest, expected, layout = ingested
    seen = {}
    for split in ("train", "val", "test"):
        rows = _read_split(layout.split("ham10000", split))
        assert len(rows) == manifest["counts"]["by_split"][split]["total"] > 0
        for r in rows:
            assert r.image.shape == (SIZE, SIZE, 3) and r.image.dtype == np.uint8
            assert r.label in range(7) and len(r.sha256) == 64
            seen.setdefault(r.lesion_id, set()).add(split)
            seen.setdefault("ids", set()).add(r.image_id)
    assert all(len(v) == 1 for k, v in seen.items() if k != "ids")
    assert set(expected["good_ids"]) <= seen["ids"]
    assert any(i.startswith("ISIC_") for i in seen["ids"])


def test_converted_images_are_correct_records(ingested):
    cfg, manifest, expected, layout = ingested
    rows = {r.image_id: r for s in ("train", "val", "test") for r in _read_split(layout.split("ham10000", s))}
    gray = rows["GRAY_1"].image
    assert np.array_equal(gray[..., 0], gray[..., 1])            # grayscale -> 3 equal channels
    cmyk = rows["CMYK_1"].image.astype(int)
    assert cmyk[SIZE // 2, SIZE // 2, 0] < 160 < cmyk[2, 2, 0]    # dark lesion on light skin
    # EXIF orientation 8: the lesion box, wider than tall when stored, is taller than wide now.
    dark = rows["EXIF_1"].image.mean(axis=2) < 130
    ys, xs = np.nonzero(dark)
    assert (ys.max() - ys.min()) * 600 / 450 > (xs.max() - xs.min())
    assert np.isnan(rows["GRAY_1"].age) is np.False_ and rows["GRAY_1"].age == 45


def test_manifest_describes_the_run(ingested):
    cfg, manifest, expected, layout = ingested
    on_disk = storage.read_json(layout.manifest("ham10000"))
    assert on_disk["fingerprint"] == manifest["fingerprint"] and len(manifest["fingerprint"]) == 64
    assert on_disk["image_size"] == SIZE and on_disk["lesion_grouped"] is True
    assert on_disk["split"]["grouped_by"] == "lesion_id"
    per_split = on_disk["counts"]["by_split"]
    assert sum(v["total"] for v in per_split.values()) == on_disk["counts"]["written"]
    assert on_disk["timing"]["decode_images_per_s"] > 0


def test_rerun_replaces_atomically_without_doubling(spark, ingested):
    cfg, manifest, expected, layout = ingested
    dataset = Path(layout.dataset("ham10000").replace("file://", ""))
    # A crashed earlier run left a staging directory behind: the rerun must clean it up.
    (dataset.parent / ".ham10000.staging-crashed").mkdir()
    (dataset.parent / ".ham10000.staging-crashed" / "junk").write_text("x")
    # ... and a zombie task attempt recreated a crashed run's scratch folder of parts
    (dataset.parent / ".ham10000.staging-crashed-parts" / "train").mkdir(parents=True)
    again = ingest(spark, cfg, run_id="run-2")
    assert again["counts"] == manifest["counts"]
    assert again["fingerprint"] == manifest["fingerprint"]
    assert sorted(p.name for p in dataset.parent.iterdir()) == ["ham10000"]
    assert sorted(p.name for p in dataset.iterdir()) == ["manifest.json", "rejects", "test", "train", "val"]
    rejects = pq.read_table(str(dataset / "rejects")).to_pandas()
    assert len(rejects) == manifest["counts"]["rejected"] and set(rejects["run_id"]) == {"run-2"}
    assert sum(len(_read_split(layout.split("ham10000", s))) for s in ("train", "val", "test")) \
        == manifest["counts"]["written"]


def test_a_failing_run_leaves_the_previous_dataset(tmp_path):
    target = tmp_path / "datasets" / "d"
    target.mkdir(parents=True)
    (target / "manifest.json").write_text("old")
    with pytest.raises(RuntimeError):
        with publishing.AtomicDir(str(target)) as staging:
            storage.write_bytes(staging + "/manifest.json", b"new, half written")
            raise RuntimeError("executor lost")
    assert (target / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["d"]
    with publishing.AtomicDir(str(target)) as staging:
        storage.write_bytes(staging + "/manifest.json", b"new")
    assert (target / "manifest.json").read_text() == "new"


@pytest.mark.slow  # a second process or a whole extra run: the full suite, not the inner loop
def test_spark_submit_job_on_the_genuine_metadata(genuine_dir, tmp_path):
    """spark-submit jobs/ingest.py as a user runs it: the full genuine metadata (10,015 rows) with
    the 56 genuine JPEGs: 56 written, 9,959 rejected as image_missing, at 224 px."""
    repo = Path(__file__).resolve().parents[1]
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cmd = [str(spark_submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
           str(repo / "jobs" / "ingest.py"), "--metadata", str(genuine_dir / "HAM10000_metadata.csv"),
           "--images", str(genuine_dir / "images"), "--root", str(tmp_path), "--size", "224",
           "--name", "genuine", "spark.conf.spark.ui.showConsoleProgress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    output = proc.stdout + proc.stderr  # spark-submit's PythonRunner merges stderr into stdout
    assert proc.returncode == 0, output[-3000:]
    assert "10015 inputs -> 56 written + 9959 rejected" in output
    manifest = storage.read_json(str(tmp_path / "datasets" / "genuine" / "manifest.json"))
    assert manifest["counts"]["rejected_by_reason"] == {"image_missing": 9959}
    assert manifest["image_size"] == 224
    assert manifest["versions"]["pyspark"].startswith("3.5")


def test_missing_inputs_fail_with_exit_code_and_message(tmp_path):
    from lesionspark.cli import main
    assert main(["ingest", "--root", str(tmp_path), "spark.master=local[1]"]) == 1
    assert main(["ingest", "--conf", str(tmp_path / "nope.yaml")]) == 2


def test_metadata_that_is_no_regular_file_is_a_clear_error(tmp_path):
    """The metadata is read on the driver without a Spark job: a FIFO there is never opened (it
    would block), an empty file or a folder is an IngestError naming it."""
    import os

    from lesionspark.dataset.writer import IngestError
    from lesionspark.ingest.driver import _read_text
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "empty.csv").write_text(" \n")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfimage_id,dx\n")
    for name, words in (("fifo.csv", "not a regular file"), ("empty.csv", "is empty"),
                        ("missing.csv", "not a regular file (notfound)"), ("", "not a regular file (directory)")):
        with pytest.raises(IngestError, match=words.replace("(", r"\(").replace(")", r"\)")):
            _read_text(f"file://{tmp_path}/{name}".rstrip("/"))
    assert _read_text(f"file://{tmp_path}/bom.csv") == "image_id,dx\n"
