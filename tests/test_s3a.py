"""An S3 root end to end through Spark's s3a connector (requirements/jars.txt), as a user runs it:
``lesionspark score --conf s3.yaml`` with the ``fs.s3a.*`` settings in that file, then
``spark-submit --conf spark.hadoop.fs.s3a.* jobs/sql.py`` on the same root, against an S3 API
server (moto) on loopback. One configuration reaches Spark (the staging it writes, the tables it
reads), pyarrow (listing, reading each file, the commit file by file) and boto3 (the lease's
conditional PUT) before the first storage call."""
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

from conftest import publish_untrained_model
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


def test_score_then_sql_on_an_s3a_root_from_the_command_line(server, genuine_dir, tmp_path):
    endpoint, client = server
    images = sorted((genuine_dir / "images").glob("*.jpg"))[:10]
    for p in images:
        client.put_object(Bucket="hospital", Key=f"archive/ward A/{p.name}", Body=p.read_bytes())
    client.put_object(Bucket="hospital", Key="archive/broken.jpg", Body=b"\xff\xd8 not a jpeg")
    publish_untrained_model(tmp_path / "registry")
    conf = tmp_path / "s3.yaml"
    conf.write_text(yaml.safe_dump({"storage": {"root": "s3a://hospital/ls"},
                                    "spark": {"master": "local[2]",
                                              "conf": {"fs.s3a.endpoint": endpoint, **KEYS,
                                                       "spark.ui.showConsoleProgress": "false"}}}))
    score = subprocess.run([sys.executable, "-m", "lesionspark.cli", "--log-level", "WARN", "score", "--conf", str(conf),
                            "--archive", "s3a://hospital/archive",
                            "--model", (tmp_path / "registry" / "models" / "cnn" / "v1").as_uri()],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert score.returncode == 0, (score.stdout + score.stderr)[-4000:]
    summary = json.loads(score.stdout[score.stdout.index("{"):])
    assert (summary["listed"], summary["scored"], summary["rejected"]) == (11, 10, 1)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="hospital", Prefix="ls/tables/")["Contents"]]
    assert any(k.startswith("ls/tables/predictions/scored_date=") for k in keys)
    assert not [k for k in keys if "/_staging/" in k and k.endswith(".parquet")]  # committed, staging removed
    fs = _s3fs(endpoint)
    preds = pq.read_table("hospital/ls/tables/predictions", filesystem=fs).to_pandas()
    assert len(preds) == 10 and preds["image_path"].str.contains("ward A").all()

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
