"""The README's main command, `lesionspark demo`, end to end at a small size, and the pipeline's
step checks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_cfg
from lesionspark.core.config import ConfigError
from lesionspark.pipeline import pipeline


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_the_results(tmp_path):
    cmd = [sys.executable, "-m", "lesionspark.cli", "demo", "--root", str(tmp_path), "--n-images", "60",
           "demo.image_size=32", "demo.epochs=1", "demo.samples_per_epoch=64", "demo.methods=[smote]",
           "train.horovod_verbose=0", "spark.master=local[2]", "evaluate.bootstrap=50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    for step in ("synth", "pipeline 1/4: ingest", "pipeline 2/4: balance", "pipeline 3/4: train",
                 "pipeline 4/4: evaluate", "score the archive"):
        assert step in proc.stderr, step
    assert "== models compared on the test split" in out and out.count("$ lesionspark sql -q") == 3
    summary = json.loads(out[out.index("\n{") + 1:])
    model = summary["models"]["cnn_smote"]
    report = Path(model["report"][len("file://"):])
    assert report.exists() and (report.parent / "roc_test.png").exists()
    assert 0 <= model["test"]["balanced_accuracy"] <= 1
    score = summary["score"]
    assert score["listed"] == score["scored"] + score["rejected"] + score["skipped"] and score["scored"] > 56
    made = summary["synth"]
    assert made["generated"] >= 60 and made["genuine"] == 56
    assert summary["ingest"]["counts"]["written"] == made["generated"] + made["genuine"]


def test_pipeline_checks_its_steps(spark, tmp_path):
    cfg = make_cfg(tmp_path)
    with pytest.raises(ConfigError, match="unknown"):
        pipeline(spark, cfg, ["ingest", "deploy"])
    with pytest.raises(ConfigError, match="no model 'cnn'"):
        pipeline(spark, cfg, ["evaluate", "score"])  # score is dropped (no archive); evaluate has no model
