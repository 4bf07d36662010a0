"""An archive nobody curates, scored twice: every entry ends as one prediction or one reject
row with a reason, nothing an entry is or is named fails the run, and the rerun scores nothing."""
import io
import os
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_cfg, publish_untrained_model
from lesionspark.store.listing import escape_name
from lesionspark.score.driver import score

pytestmark = pytest.mark.spark


def _exif(jpeg: bytes, payload: bytes) -> bytes:
    at = 4 + int.from_bytes(jpeg[4:6], "big")  # after the JFIF header
    return jpeg[:at] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


@pytest.fixture(scope="module")
def poisoned(genuine_dir, tmp_path_factory):
    """(archive, outcome expected per entry name): generated here, in the test."""
    base = tmp_path_factory.mktemp("poison")
    a = base / "archive"
    (a / "ward").mkdir(parents=True)
    genuine = sorted((genuine_dir / "images").glob("*.jpg"))
    expected = {}
    for p in genuine[:6]:
        shutil.copy(p, a / "ward" / p.name)
        expected[p.name] = "scored"
    buf = io.BytesIO()
    Image.open(genuine[6]).save(buf, "JPEG", dpi=(72, 72))
    jfif = buf.getvalue()
    (a / "ward" / "anonymised.jpg").write_bytes(_exif(jfif, b"Exif\x00\x00" + b"\x00" * 64))
    (a / "ward" / "garbage-exif.jpg").write_bytes(_exif(jfif, b"Exif\x00\x00MM\x00\x2a" + b"\xff" * 20))
    expected.update({"anonymised.jpg": "scored", "garbage-exif.jpg": "scored"})
    latin1 = os.fsencode(str(a / "ward")) + b"/M\xfcller %41.jpg"  # a Latin-1 name from an old share
    shutil.copy(genuine[7], latin1)
    expected[escape_name(b"M\xfcller %41.jpg")] = "scored"
    mpo = io.BytesIO()
    Image.open(genuine[8]).save(mpo, "MPO", save_all=True, append_images=[Image.open(genuine[9])])
    (a / "ward" / "stereo.jpg").write_bytes(mpo.getvalue())
    expected["stereo.jpg"] = "scored"
    (a / "loops").mkdir()
    os.symlink("..", a / "loops" / "up.jpg")  # two loop links in one folder
    os.symlink(".", a / "loops" / "here.jpg")
    outside = base / "secret.jpg"
    shutil.copy(genuine[10], outside)
    os.symlink(outside, a / "ward" / "outside.jpg")
    os.symlink(a / "ward" / genuine[0].name, a / "ward" / "inside-link.jpg")
    os.symlink(base / "gone.jpg", a / "ward" / "dangling.jpg")
    os.mkfifo(a / "ward" / "pipe.jpg")  # opening it for reading would block forever
    expected.update({n: "symlink_not_followed" for n in ("up.jpg", "here.jpg", "outside.jpg", "inside-link.jpg",
                                                         "dangling.jpg")})
    expected["pipe.jpg"] = "special_file"
    (a / "ward" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    expected["broken.jpg"] = "rejected"
    return a, expected


def _outcomes(root):
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    files = pq.read_table(str(root / "tables" / "score_files")).to_pandas()
    rejects = pq.read_table(str(root / "tables" / "score_rejects")).to_pandas()
    by_sha = dict(zip(files["image_sha256"], files["path_key"]))
    out = {}
    for sha in preds["image_sha256"]:
        for path in files[files["image_sha256"] == sha]["path_key"]:
            out[path.rsplit("/", 1)[-1]] = "scored"
    for _, r in rejects.iterrows():
        name = (r["image_path"] or by_sha.get(r["image_sha256"], "")).rsplit("/", 1)[-1]
        out[name] = r["reason"]
    return out, preds, rejects


def test_every_entry_ends_as_one_row_and_the_rerun_scores_nothing(spark, poisoned, tmp_path):
    a, expected = poisoned
    publish_untrained_model(tmp_path, size=32)
    cfg = make_cfg(tmp_path, score__archive=str(a), score__model="cnn")
    first = score(spark, cfg, run_id="p1")
    out, preds, rejects = _outcomes(tmp_path)
    got = {n: ("rejected" if expected[n] == "rejected" and o not in ("scored",) else o) for n, o in out.items()}
    assert got == expected
    assert first["listed"] == len(expected) and first["rejected"] == len(rejects) == len(expected) - len(preds)
    assert not rejects["detail"].fillna("").str.contains(str(a)).any()  # no clear path in a detail
    second = score(spark, cfg, run_id="p2")
    assert second["scored"] == 0 and second["listed"] == len(expected)
    again, preds2, _ = _outcomes(tmp_path)
    assert len(preds2) == len(preds) and preds2["image_sha256"].is_unique


@pytest.mark.slow
def test_following_links_stays_inside_the_archive_and_cuts_loops(spark, poisoned, tmp_path):
    a, expected = poisoned
    publish_untrained_model(tmp_path, size=32)
    cfg = make_cfg(tmp_path, score__archive=str(a), score__model="cnn", archive__follow_links=True)
    summary = score(spark, cfg, run_id="f1")
    out, preds, rejects = _outcomes(tmp_path)
    reasons = dict(zip(rejects["image_path"].str.rsplit("/", n=1).str[-1], rejects["reason"]))
    assert reasons["outside.jpg"] == "link_outside_archive" and reasons["dangling.jpg"] == "dangling_symlink"
    assert reasons["pipe.jpg"] == "special_file"
    assert out["inside-link.jpg"] == "scored"  # the same content as its target: one prediction
    assert preds["image_sha256"].is_unique
    assert summary["listed"] < 200  # the loops were entered once, not until the listing depth ran out


@pytest.mark.slow  # a second process or a whole extra run: the full suite, not the inner loop
def test_an_unreadable_path_falls_back_to_another_path_of_the_same_content(spark, genuine_dir, tmp_path):
    """A new model version rescoring known contents: the chosen (first) path of a content fails to
    read (an I/O error, by fault injection), so another path of the same content is read; a content
    with no readable path is an unreadable reject, not a lost run, and the next run scores it."""
    import subprocess
    import sys
    genuine = sorted((genuine_dir / "images").glob("*.jpg"))
    a = tmp_path / "archive"
    for sub, name, src in (("a", "x.jpg", genuine[0]), ("b", "x-copy.jpg", genuine[0]), ("c", "only.jpg", genuine[1])):
        (a / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, a / sub / name)
    root = tmp_path / "root"
    publish_untrained_model(root, size=32, version="v1")
    cfg = make_cfg(root, score__archive=str(a), score__model="cnn:latest")
    assert score(spark, cfg, run_id="v1-run")["scored"] == 2
    publish_untrained_model(root, size=32, version="v2")  # a new version: every known content again
    conf = tmp_path / "c.yaml"
    conf.write_text(cfg.with_overrides({"spark.master": "local[1]"}).to_yaml())
    env = {**os.environ, "LESIONSPARK_INJECT_READ_FAULT": r"/(a/x|c/only)\.jpg$"}
    proc = subprocess.run([sys.executable, "-m", "lesionspark.cli", "--log-level", "WARN", "score", "--conf", str(conf),
                           "spark.conf.spark.ui.enabled=false"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    v2 = preds[preds["model_version"] == "v2"]
    assert list(v2["image_path"].str.rsplit("/", n=2).str[-2:].str.join("/")) == ["b/x-copy.jpg"]
    rejects = pq.read_table(str(root / "tables" / "score_rejects")).to_pandas()
    (bad,) = rejects[rejects["model_version"] == "v2"].itertuples()
    assert bad.reason == "unreadable" and bad.image_sha256 is None and "only.jpg" not in bad.detail
    after = score(spark, cfg, run_id="v2-again")  # the fault is gone: the content is scored, nothing else
    assert after["scored"] == 1 and after["rejected"] == 0
