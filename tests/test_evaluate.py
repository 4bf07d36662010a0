"""Evaluate on real Spark and Petastorm files: metrics table, report, plots, rerun, compare."""
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn import metrics as M

from doctext import all_docs
from conftest import make_cfg, publish_untrained_model
from lesionspark.core.classes import CLASSES, MALIGNANT
from lesionspark.evaluate.driver import METRICS_SCHEMA, compare, evaluate
from lesionspark.evaluate.report import DPI, SIZES

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def evaluated(spark, ingested_small, tmp_path_factory):
    """An untrained CNN (real Keras, random weights) evaluated on the small ingest's val and test."""
    cfg, manifest, layout = ingested_small
    root = tmp_path_factory.mktemp("eval-root")
    # The evaluation reads the ingested dataset under its own root: link it in.
    (root / "datasets").mkdir()
    (root / "datasets" / "ham10000").symlink_to(layout.dataset("ham10000")[len("file://"):])
    publish_untrained_model(root, "cnn", "v1", size=32, dataset="ham10000", balance="none")
    ecfg = make_cfg(root, evaluate__bootstrap=200)
    summary = evaluate(spark, ecfg, run_id="eval-1")
    return ecfg, root, summary, manifest


def _metrics(spark, root):
    return spark.read.parquet(str(root / "tables" / "metrics")).toPandas()


def test_metrics_rows_are_complete_and_match_scikit_learn(spark, evaluated):
    cfg, root, summary, manifest = evaluated
    table = _metrics(spark, root)
    assert list(table.columns) == [c for c, _ in METRICS_SCHEMA]
    assert set(table["split"]) == {"val", "test"}
    assert table[["model", "model_version", "dataset", "split", "metric", "evaluated_at", "run_id"]].notna().all().all()
    assert set(table["run_id"]) == {"eval-1"}
    report = root / "reports" / "cnn" / "v1"
    for split in ("val", "test"):
        rows = table[table["split"] == split]
        n = manifest["counts"]["by_split"][split]["total"]
        preds = pd.read_parquet(report / f"predictions_{split}.parquet")
        assert len(preds) == n and preds["reason"].isna().all()   # every image of the split scored
        y = preds["label"].to_numpy()
        probs = np.array(preds["probabilities"].tolist())
        pred = probs.argmax(1)
        overall = rows[rows["class"].isna()].set_index("metric")["value"]
        assert overall["n_images"] == n
        assert overall["accuracy"] == pytest.approx(M.accuracy_score(y, pred))
        assert overall["balanced_accuracy"] == pytest.approx(M.balanced_accuracy_score(y, pred))
        assert overall["macro_f1"] == pytest.approx(M.f1_score(y, pred, labels=list(range(7)), average="macro", zero_division=0))
        assert overall["cohen_kappa"] == pytest.approx(M.cohen_kappa_score(y, pred, labels=list(range(7))))
        mal = [CLASSES.index(c) for c in MALIGNANT]
        assert overall["malignant_auc"] == pytest.approx(M.roc_auc_score(preds["malignant"], probs[:, mal].sum(1)))
        assert overall["accuracy_ci_low"] <= overall["accuracy"] <= overall["accuracy_ci_high"]
        assert 0 <= overall["ece"] <= 1 and 0 <= overall["ece_uncalibrated"] <= 1
        assert overall["temperature"] == pytest.approx(summary["temperature"])  # one T, fitted on val
        per_class = rows[rows["metric"] == "support"].set_index("class")["value"]
        assert per_class.to_dict() == {c: float(manifest["counts"]["by_split"][split]["per_class"].get(c, 0))
                                       for c in CLASSES}
        counts = rows[rows["metric"] == "confusion_count"]
        assert len(counts) == 49 and counts["value"].sum() == n
        absent = [c for c in CLASSES if manifest["counts"]["by_split"][split]["per_class"].get(c, 0) == 0]
        for c in absent:  # defined (null), with a warning in the summary
            assert rows[(rows["metric"] == "recall") & (rows["class"] == c)]["value"].isna().all()
            assert any(f"class {c} is absent" in w for w in summary["splits"][split]["warnings"])
    # The malignant threshold is chosen on val and applied unchanged to test.
    thr = table[table["metric"] == "malignant_threshold@sens0.95"].groupby("split")["value"].first()
    assert thr["val"] == thr["test"] == pytest.approx(summary["threshold"]["value"])


def test_report_has_valid_plots_and_the_documents(evaluated):
    cfg, root, summary, manifest = evaluated
    report = root / "reports" / "cnn" / "v1"
    expected = {f"{kind}_{s}.png": SIZES[kind] for kind in ("roc", "confusion", "reliability", "recall")
                for s in ("val", "test")}
    expected["training_curves.png"] = SIZES["training_curves"]
    for name, (w, h) in expected.items():
        with Image.open(report / name) as im:
            im.verify()
        with Image.open(report / name) as im:
            assert im.format == "PNG" and im.size == (int(w * DPI), int(h * DPI)), name
            assert np.asarray(im.convert("L")).std() > 5, f"{name} is blank"
    text = (report / "report.md").read_text()
    for name in expected:
        assert f"]({name})" in text
    assert manifest["fingerprint"] in text and "## Model card" in text and "## Split protocol" in text
    assert "not a diagnosis" in text
    # what the run did, as it recorded it: the default objective (ECE), its bins, the resamples
    assert (f"fitted by this run on val for the lowest top-label expected calibration error (ECE, "
            f"{cfg.get('evaluate.calibration_bins')} bins)") in text and "log-loss" not in text
    assert f"{cfg.get('evaluate.bootstrap')} resamples, seed {cfg.get('evaluate.seed')}" in text


def test_the_calibration_sentence_says_what_was_recorded():
    from lesionspark.evaluate.report import _calibration_note
    fitted = _calibration_note({"temperature": 1.5, "source": "fitted", "split": "val", "objective": "nll", "bins": 15})
    assert "fitted by this run on val for the lowest log-loss" in fitted and "ECE" not in fitted
    card = _calibration_note({"temperature": 2.0, "source": "model card", "split": "val", "objective": "ece", "bins": 10})
    assert "taken from the model card, where it was fitted on val for the lowest top-label expected calibration " \
           "error (ECE, 10 bins)" in card
    unknown = _calibration_note({"temperature": 2.0, "source": "model card"})
    assert "a split the card does not record" in unknown and "an objective the card does not record" in unknown


def test_the_selection_sentence_says_which_weights_the_model_holds():
    from lesionspark.evaluate.report import _selection_note
    last = _selection_note({"selection": {"rule": "last", "epochs": [8]}, "epochs_run": 8})
    assert "last epoch (8 of 8 epochs run" in last and "nothing was chosen on val" in last
    swa = _selection_note({"selection": {"rule": "swa", "epochs": [6, 7, 8]}, "epochs_run": 8})
    assert "mean of the weights of epochs 6, 7, 8" in swa
    best = _selection_note({"selection": {"rule": "best", "epochs": [4], "monitor": "val_macro_recall"}, "epochs_run": 8})
    assert "epoch 4 (of 8 epochs run), the best on val `val_macro_recall`" in best and "optimistic" in best
    assert "does not record" in _selection_note({})


def test_rerun_replaces_its_own_rows_and_compare_lists_versions(spark, evaluated):
    cfg, root, summary, _ = evaluated
    before = _metrics(spark, root)
    evaluate(spark, cfg, run_id="eval-2")
    after = _metrics(spark, root)
    assert len(after) == len(before) and set(after["run_id"]) == {"eval-2"}
    # v2 takes age, sex and site too: the splits' own columns are fed to it (scoring and the report's heatmaps)
    publish_untrained_model(root, "cnn", "v2", size=32, dataset="ham10000", balance="smote",
                            metadata=["age", "sex", "localization"])
    v2 = evaluate(spark, cfg.with_overrides({"evaluate.model": "cnn:v2", "evaluate.splits": ["test"]}), run_id="eval-3")
    assert v2["splits"]["test"]["n_images"] == summary["splits"]["test"]["n_images"]
    assert not any("could not be scored" in w for w in v2["splits"]["test"]["warnings"])
    table = compare(spark, str(root), "test")
    assert sorted(table["model_version"]) == ["v1", "v2"]
    v1 = table.set_index("model_version").loc["v1"]
    t = after[(after["split"] == "test") & after["class"].isna()].set_index("metric")["value"]
    for m in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy", "malignant_auc"):
        assert v1[m] == pytest.approx(t[m])
    # v2 evaluated test only, but val (the threshold split) is scored and recorded too
    assert len(_metrics(spark, root).query("model_version == 'v2'")["split"].unique()) == 2


def test_binary_model_and_cli_errors(spark, evaluated, tmp_path):
    cfg, root, _, _ = evaluated
    publish_untrained_model(root, "binary", "b1", size=32, classes=["benign", "malignant"], dataset="ham10000")
    s = evaluate(spark, cfg.with_overrides({"evaluate.model": "binary:b1"}), run_id="eval-b")
    assert s["splits"]["test"]["n_images"] > 0 and not math.isnan(s["splits"]["test"]["malignant_auc"])
    r = subprocess.run([sys.executable, "-m", "lesionspark.cli", "evaluate", "--root", str(tmp_path),
                        "--model", "nothing:latest"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no model 'nothing'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "lesionspark.cli", "compare", "--root", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "run `lesionspark evaluate` first" in r.stderr


@pytest.mark.slow
def test_notebooks_execute_top_to_bottom(spark, evaluated, genuine_dir, monkeypatch):
    """Both notebooks run in a real kernel over an evaluated and scored root."""
    import nbformat
    from nbclient import NotebookClient
    from pathlib import Path
    from lesionspark.score.driver import score
    cfg, root, _, _ = evaluated
    score(spark, cfg.with_overrides({"score.archive": str(genuine_dir / "images"), "score.model": "cnn:v1"}))
    monkeypatch.setenv("LESIONSPARK_ROOT", str(root))
    monkeypatch.setenv("LESIONSPARK_MODEL", "cnn:v1")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    for name in ("01_explore.ipynb", "02_results.ipynb"):
        path = Path(__file__).resolve().parents[1] / "notebooks" / name
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} drew no figure"


def test_readme_metrics_queries_run(spark, evaluated):
    """The metrics-table SQL examples in the docs run and return rows."""
    import re
    from lesionspark.sql.query import register
    cfg, root, _, _ = evaluated
    register(spark, str(root))
    readme = all_docs()
    block = next(b for b in re.findall(r"```sql\n(.*?)```", readme, re.S) if "FROM metrics" in b)
    code = "\n".join(line for line in block.splitlines() if not line.strip().startswith("--"))
    statements = [s.strip() for s in code.split(";") if s.strip()]
    assert len(statements) == 3
    rows = [spark.sql(s).collect() for s in statements]
    assert rows[0] and rows[1]  # every evaluated model; melanoma recall with its support
    assert {r.model_version for r in rows[0]} >= {"v1"}


def test_an_empty_split_is_a_clear_error():
    from lesionspark.core.config import ConfigError
    from lesionspark.evaluate.driver import split_result
    empty = pd.DataFrame({"image_id": [], "lesion_id": [], "dx": [], "label": [], "malignant": [],
                          "probabilities": [], "reason": [], "detail": []})
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        split_result(empty, list(CLASSES), 0.5, make_cfg("/tmp"))


def test_a_history_that_is_not_a_regular_json_file_gives_no_curves_not_a_hang(tmp_path):
    """A model folder named by URI can be anywhere: a FIFO or a broken file under history.json."""
    import os
    from lesionspark.evaluate.driver import _history
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "good.json").write_text('{"loss": [1.0, 0.5]}')
    assert _history(str(tmp_path / "fifo.json")) == {} and _history(str(tmp_path / "broken.json")) == {}
    assert _history(str(tmp_path / "missing.json")) == {}
    assert _history(str(tmp_path / "good.json")) == {"loss": [1.0, 0.5]}
