"""Secrets stay secret: the path salt reaches executors without entering a plan, and neither it nor
the S3 keys in the Spark configuration appear in a real event log, the run's logs or its tables."""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import publish_untrained_model

SALT = "pepper-Xyzzy-4417"
S3_SECRET = "S3SECRETKEY-Plugh-9021"
S3_TOKEN = "SESSIONTOKEN-Frotz-3310"
S3_ACCESS = "AKIAACCESSKEY-Gnusto-77"


def _every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


@pytest.mark.slow  # a scoring run in its own process, with Spark's event log
def test_no_secret_in_the_event_log_the_logs_or_the_tables(genuine_dir, tmp_path):
    archive = tmp_path / "archive" / "DOE_JOHN"
    archive.mkdir(parents=True)
    for p in sorted((genuine_dir / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, archive / p.name)
    root, events = tmp_path / "root", tmp_path / "events"
    events.mkdir()
    publish_untrained_model(root, name="m", size=16)
    cmd = [sys.executable, "-m", "lesionspark.cli", "score", "--root", str(root), "--archive",
           str(tmp_path / "archive"), "--model", "m:v1", "score.hash_paths=true", f"score.path_salt={SALT}",
           "spark.master=local[1]", "spark.conf.spark.ui.enabled=false",
           "spark.conf.spark.eventLog.enabled=true", f"spark.conf.spark.eventLog.dir=file://{events}",
           f"spark.conf.spark.hadoop.fs.s3a.secret.key={S3_SECRET}",
           f"spark.conf.spark.hadoop.fs.s3a.access.key={S3_ACCESS}",
           f"spark.conf.spark.hadoop.fs.s3a.session.token={S3_TOKEN}"]
    run = subprocess.run(cmd, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-3000:]
    log = _every_byte(events)
    assert b"SparkListenerSQLExecutionStart" in log and b"MapInPandas" in log  # a real event log, with plans
    written = run.stdout + run.stderr + log + _every_byte(root / "tables")
    for secret in (SALT, S3_SECRET, S3_TOKEN, S3_ACCESS, "DOE_JOHN"):
        assert secret.encode() not in written, secret
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    paths = {f"file:{p}" for p in archive.iterdir()}
    assert len(preds) == 3 and set(preds["image_path"]) == {hashlib.sha256((SALT + p).encode()).hexdigest()
                                                               for p in paths}  # the hash indexes already hold


@pytest.mark.spark
def test_explain_on_a_folder_stores_neither_path_nor_name_when_paths_are_hashed(spark, genuine_dir, tmp_path):
    from conftest import make_cfg
    from lesionspark.explain.driver import explain
    folder = tmp_path / "DOE_JOHN"
    folder.mkdir()
    for p in sorted((genuine_dir / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, folder / f"DOE_JOHN_{p.name}")
    publish_untrained_model(tmp_path, name="m", size=16)
    cfg = make_cfg(tmp_path, explain__model="m:v1", explain__images=str(folder), score__hash_paths=True,
                   score__path_salt=SALT)
    summary = explain(spark, cfg)
    table = pq.read_table(summary["table"].replace("file://", "")).to_pandas()
    assert len(table) == 2 and table["predicted_dx"].notna().all()
    stored = table.astype(str).to_string() + "".join(os.listdir(summary["overlays"].replace("file://", "")))
    assert "DOE_JOHN" not in stored and SALT not in stored
    assert set(table["source_path"]) == {hashlib.sha256((SALT + f"file:{p}").encode()).hexdigest()
                                         for p in folder.iterdir()}
