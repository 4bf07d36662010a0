"""An S3 root end to end through Spark's s3a connector (requirements/jars.txt), as a user runs it:
``lesionspark pipeline --conf s3.yaml`` and ``lesionspark explain --conf s3.yaml`` with the
``fs.s3a.*`` settings in that file, then ``spark-submit --conf spark.hadoop.fs.s3a.* jobs/sql.py``
on the same root, against an S3 API server (moto) on loopback. One configuration reaches Spark (the
staging it writes, the tables it reads), pyarrow (the inputs, the datasets, the ranks' shards, the
commit file by file) and boto3 (the lease's conditional PUT) before the first storage call."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pyspark
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from test_s3 import Store, _free_port

pytestmark = pytest.mark.slow  # two JVMs and two TensorFlow processes
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KEYS = {"fs.s3a.path.style.access": "true", "fs.s3a.access.key": "test-key", "fs.s3a.secret.key": "test-secret",
        "fs.s3a.endpoint.region": "us-east-1", "fs.s3a.connection.ssl.enabled": "false"}


@pytest.fixture(scope="module")
def server():
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server
    port = _free_port()
    httpd = make_server("127.0.0.1", port, Store(), threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test-key",
                          aws_secret_access_key="test-secret", region_name="us-east-1")
    client.create_bucket(Bucket="hospital")
    yield endpoint, client
    httpd.shutdown()
    thread.join()


def _s3fs(endpoint):
    return pafs.S3FileSystem(endpoint_override=endpoint.split("://")[1], scheme="http", access_key="test-key",
                             secret_key="test-secret", region="us-east-1")


def _put_tree(client, local: Path, prefix: str) -> str:
    for f in sorted(local.rglob("*")):
        if f.is_file():
            client.put_object(Bucket="hospital", Key=f"{prefix}/{f.relative_to(local).as_posix()}", Body=f.read_bytes())
    return f"s3a://hospital/{prefix}"


def _cli(conf: Path, *args: str, cwd: Path) -> dict:
    run = subprocess.run([sys.executable, "-m", "lesionspark.cli", "--log-level", "WARN", *args, "--conf", str(conf)],
                         capture_output=True, text=True, timeout=600, cwd=cwd)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return json.loads(run.stdout[run.stdout.index("{"):])


def test_every_stage_on_one_s3a_root_from_the_command_line(server, synth_small, genuine_dir, tmp_path):
    """``lesionspark pipeline --conf s3.yaml`` (ingest from the bucket, balance, train with two
    Horovod ranks reading their Petastorm shards from it, evaluate, score), then ``explain`` with the
    same file, then ``spark-submit jobs/sql.py`` with the settings as ``--conf``: one ``s3a://`` root."""
    endpoint, client = server
    data = _put_tree(client, Path(synth_small["out"]), "raw/ham")
    archive = tmp_path / "archive"
    (archive / "ward A").mkdir(parents=True)
    for p in sorted((genuine_dir / "images").glob("*.jpg"))[:10]:
        (archive / "ward A" / p.name).write_bytes(p.read_bytes())
    (archive / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    conf = tmp_path / "s3.yaml"
    conf.write_text(yaml.safe_dump({
        "storage": {"root": "s3a://hospital/ls"}, "dataset": {"image_size": 32},
        "ingest": {"metadata": f"{data}/HAM10000_metadata.csv",
                   "images": [f"{data}/{Path(d).name}" for d in synth_small["images"]]},
        "balance": {"method": "oversample"},
        "train": {"num_proc": 2, "epochs": 1, "samples_per_epoch": 128, "warmup_epochs": 0, "horovod_verbose": 0},
        "evaluate": {"bootstrap": 0, "gradcam_examples": 0},
        "score": {"archive": _put_tree(client, archive, "archive")},
        "explain": {"limit": 6},
        "spark": {"master": "local[2]", "conf": {"fs.s3a.endpoint": endpoint, **KEYS,
                                                 "spark.ui.showConsoleProgress": "false"}}}))
    out = _cli(conf, "pipeline", cwd=tmp_path)
    assert list(out) == ["ingest", "balance", "train", "evaluate", "score"]
    assert out["ingest"]["counts"]["written"] == synth_small["generated"] + synth_small["genuine"]
    assert out["train"]["workers"] == 2 and out["evaluate"]["model_version"] == out["train"]["version"]
    summary = out["score"]
    assert (summary["listed"], summary["scored"], summary["rejected"]) == (11, 10, 1)
    shown = _cli(conf, "explain", cwd=tmp_path)
    assert shown["explained"] + shown["rejected"] == 6 and shown["table"].startswith("s3a://hospital/ls/")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="hospital", Prefix="ls/", MaxKeys=10000)["Contents"]}
    version, run = out["train"]["version"], out["ingest"]["run_id"]
    # published by their records (no directory renames on S3): the dataset, the model, the report
    assert {"ls/datasets/ham10000/_PUBLISHED", f"ls/models/cnn/{version}/_PUBLISHED"} <= keys
    assert f"ls/datasets/ham10000/_v-{run}/manifest.json" in keys
    assert any(k.startswith(f"ls/reports/cnn/{version}/_v-") and k.endswith("/report.md") for k in keys)
    assert f"ls/runs/{version}/state.json" in keys  # rank 0 checkpointed on the store
    assert any(k.startswith("ls/tables/predictions/scored_date=") for k in keys)
    assert any(k.startswith("ls/tables/metrics/") for k in keys)
    assert not [k for k in keys if "/_staging/" in k and k.endswith(".parquet")]  # committed, staging removed
    fs = _s3fs(endpoint)
    preds = pq.read_table("hospital/ls/tables/predictions", filesystem=fs).to_pandas()
    assert len(preds) == 10 and preds["image_path"].str.contains("ward A").all()
    table = pq.read_table(shown["table"][len("s3a://"):], filesystem=fs).to_pandas()
    published = shown["table"].rsplit("/", 1)[0]
    assert "/_v-" in published and table["overlay_path"].dropna().str.startswith(f"{published}/overlays/").all()

    sql = subprocess.run([str(BIN / "spark-submit"), "--master", "local[1]",
                          "--conf", f"spark.pyspark.python={sys.executable}",
                          "--conf", f"spark.hadoop.fs.s3a.endpoint={endpoint}",
                          *[a for k, v in KEYS.items() for a in ("--conf", f"spark.hadoop.{k}={v}")],
                          str(REPO / "jobs" / "sql.py"), "--root", "s3a://hospital/ls",
                          "-q", "SELECT count(*) AS n, count(DISTINCT image_sha256) AS contents FROM predictions"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "SPARK_HOME": str(Path(pyspark.__file__).parent),
                              "PYSPARK_PYTHON": sys.executable})
    assert sql.returncode == 0, sql.stdout[-2000:] + "\n".join(l for l in sql.stderr.splitlines() if " INFO " not in l)[-3000:]
    assert [line.split() for line in sql.stdout.splitlines() if line.strip()][-1] == ["10", "10"]
