"""`lesionspark explain` and `score.explain_flagged` with real Spark, a real Keras model and real files."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_cfg, publish_untrained_model
from lesionspark.cli import main
from lesionspark.explain.driver import explain
from lesionspark.score.driver import score
from lesionspark.sql.query import run_query

pytestmark = pytest.mark.spark


def _table(summary):
    return pd.read_parquet(summary["table"][len("file://"):]).sort_values("image", ignore_index=True)


def _overlay(path):
    return np.asarray(Image.open(io.BytesIO(Path(path[len("file://"):]).read_bytes())))


@pytest.fixture(scope="module")
def folder(synth_small, tmp_path_factory):
    d = tmp_path_factory.mktemp("explain") / "ward A"
    (d / "2026-11-02").mkdir(parents=True)
    for p in sorted(Path(synth_small["images"][0]).glob("*.jpg"))[:9]:
        shutil.copy(p, d / "2026-11-02" / p.name)
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    return d


def test_explain_a_split_writes_an_overlay_per_image_and_a_table(spark, ingested_small):
    cfg, manifest, layout = ingested_small
    root = Path(cfg.get("storage.root"))
    publish_untrained_model(root, name="explain_cnn", size=32, dataset=manifest["dataset"])
    run = cfg.with_overrides({"explain.model": "explain_cnn:latest", "explain.split": "val", "explain.limit": 12})
    summary = explain(spark, run)
    assert summary["source"] == "split-val" and summary["images"] == 12 and summary["explained"] == 12
    t = _table(summary)
    assert len(t) == 12 and t["image"].is_unique and t["reason"].isna().all()
    assert set(t["true_dx"]) <= {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert t["confidence"].between(0, 1).all()
    assert t["explanation_empty"].notna().all() and int(t["explanation_empty"].sum()) == summary["empty"]
    assert (t["overlay_path"].isna() == t["explanation_empty"]).all()  # no blank overlay is drawn
    for path in t["overlay_path"].dropna():
        assert "/explanations/explain_cnn/v1/split-val/overlays/" in path
        assert _overlay(path).shape == (32, 32, 3)
    # a rerun replaces the folder: the same rows, no second copy
    again = _table(explain(spark, run))
    assert list(again["image"]) == list(t["image"])
    assert len(list((root / "explanations" / "explain_cnn" / "v1").iterdir())) == 1


def test_explain_a_folder_accounts_for_every_file(spark, folder, tmp_path, capsys):
    """The CLI as a user runs it; its JSON summary on stdout."""
    publish_untrained_model(tmp_path, name="m", size=32)
    capsys.readouterr()
    code = main(["--log-level", "WARN", "explain", "--root", str(tmp_path), "--model", "m:v1", "--images",
                 str(folder), "--limit", "0", "spark.master=local[2]", "spark.conf.spark.ui.enabled=false"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 10 and summary["explained"] == 9 and summary["rejected"] == 1
    t = _table(summary)
    bad = t[t["reason"].notna()]
    assert list(bad["source_path"].str.rsplit("/", n=1).str[-1]) == ["broken.jpg"] and bad["overlay_path"].isna().all()
    good = t[t["reason"].isna()]
    assert (good["overlay_path"].isna() == good["explanation_empty"]).all()
    assert good["source_path"].str.contains("ward A/2026-11-02/").all()
    assert all(_overlay(p).shape == (32, 32, 3) for p in good["overlay_path"].dropna())
    # explain's table and the model card as SQL tables, by name
    sql = run_query(spark, str(tmp_path), "SELECT model, model_version, source, count(*) AS n, "
                    "count(reason) AS rejected FROM explanations GROUP BY 1, 2, 3")
    assert sql.to_dict("records") == [{"model": "m", "model_version": "v1", "source": "folder-ward_A",
                                       "n": 10, "rejected": 1}]
    cards = run_query(spark, str(tmp_path), "SELECT name, version, architecture, image_size, classes FROM model_cards")
    assert cards.to_dict("records") == [{"name": "m", "version": "v1", "architecture": "cnn", "image_size": 32,
                                         "classes": "akiec,bcc,bkl,df,mel,nv,vasc"}]


def test_missing_model_or_folder_is_a_clear_error(tmp_path):
    assert main(["explain", "--root", str(tmp_path), "--model", "nope", "spark.master=local[1]"]) == 2
    publish_untrained_model(tmp_path, name="m", size=32)
    assert main(["explain", "--root", str(tmp_path), "--model", "m", "--images", str(tmp_path / "none"),
                 "spark.master=local[1]"]) == 2


@pytest.mark.slow  # a second process or a whole extra run: the full suite, not the inner loop
def test_score_writes_overlays_for_flagged_images(spark, folder, tmp_path):
    publish_untrained_model(tmp_path, name="m", size=32)
    # threshold 0: every scored image is flagged for review; a second model version does not explain
    cfg = make_cfg(tmp_path, score__archive=str(folder), score__model="m:v1", score__explain_flagged=True,
                   evaluate__default_threshold=0.0)
    summary = score(spark, cfg)
    assert summary["scored"] == 9 and summary["flagged"] == 9
    preds = spark.read.parquet(str(tmp_path / "tables" / "predictions")).toPandas()
    assert preds["review_flag"].all() and preds["explanation_path"].notna().all()
    for sha, path in zip(preds["image_sha256"], preds["explanation_path"]):
        assert path.endswith(f"/explanations/m/v1/flagged/{sha}.png") and _overlay(path).shape == (32, 32, 3)
    publish_untrained_model(tmp_path, name="m2", size=32)
    score(spark, make_cfg(tmp_path, score__archive=str(folder), score__model="m2:v1", evaluate__default_threshold=0.0))
    preds = spark.read.option("mergeSchema", "true").parquet(str(tmp_path / "tables" / "predictions")).toPandas()
    assert preds[preds["model"] == "m2"]["explanation_path"].isna().all()
    assert not (tmp_path / "explanations" / "m2").exists()


def test_model_cards_leaves_out_a_fifo_or_broken_card_without_blocking(spark, tmp_path):
    import os
    publish_untrained_model(tmp_path, name="m", size=32)
    for version, kind in (("v2", "fifo"), ("v3", "broken")):
        d = tmp_path / "models" / "m" / version
        d.mkdir(parents=True)
        if kind == "fifo":
            os.mkfifo(d / "model_card.json")
        else:
            (d / "model_card.json").write_text("{not json")
    cards = run_query(spark, str(tmp_path), "SELECT version FROM model_cards")
    assert cards["version"].tolist() == ["v1"]
