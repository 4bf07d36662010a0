"""Ingest and score on each kind of storage root, as ratios against the same stage on a local root
in the same run: a real HDFS (Hadoop's MiniDFSCluster, fetched and built by scripts/setup.sh) and an
S3 API server (moto) on loopback reached through Spark's s3a connector and pyarrow. One Spark
session (local[2]) serves all three roots; each stage runs once per root on the same files.

    .venv/bin/python benchmarks/roots.py --n-images 1000

The files are GENERATED (`lesionspark synth`, 300x225 JPEGs, plus the 56 genuine ones). On each
root: score first (an untrained CNN at 64 px: the cost is reading, decoding and the tables, not the
model), then ingest at 64 px into a fresh root. A warm-up pass on a local root comes first, so that
no timed run pays for starting the Python workers. Per root it also reports the floor (every archive
file listed and read whole through the root's Python client, one process) and the seconds of each
step the stages log (listing, reading and predicting, writing the tables). Loopback servers in one process on 2 cores: the
ratios say what each root's client and protocol cost lesionspark, not what a cluster's storage does.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def start_minidfs(base: Path):
    import pyspark
    minidfs = Path(sys.prefix) / "share" / "lesionspark" / "minidfs"
    jars = Path(pyspark.__file__).parent / "jars"
    cp = f"{minidfs / 'classes'}:{minidfs / 'hadoop-client-minicluster-3.3.4.jar'}:{jars}/*"
    base.mkdir(parents=True, exist_ok=True)
    log = open(base.parent / "minidfs.log", "w")  # the NameNode's and DataNode's log, next to the data
    proc = subprocess.Popen(["java", "-Xmx1g", "-cp", cp, "MiniDfs", str(base), "1"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    return proc, proc.stdout.readline().split()[1]


def start_s3():
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from test_s3 import Store, _free_port
    from werkzeug.serving import make_server
    port = _free_port()
    httpd = make_server("127.0.0.1", port, Store(), threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{port}"


def upload(spark, local: Path, target: str) -> None:
    """The folder tree ``local`` copied to ``target`` through Hadoop's Java client (HDFS)."""
    hfs = spark._jvm.org.apache.hadoop.fs
    fs = hfs.Path(target).getFileSystem(spark._jsc.hadoopConfiguration())
    fs.copyFromLocalFile(False, True, hfs.Path(str(local)), hfs.Path(target))


class Steps(logging.Handler):
    """The seconds of each step a stage logs through ``core.progress.timed`` ("listing + index",
    "write tables", ...): where a run's time goes, per root."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record):
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == "%s: %d %s in %.1fs (%.1f %s/s)":
            self.seconds[_short(args[0])] = round(args[3], 1)
        elif record.msg == "%s: done in %.1fs":
            self.seconds[_short(args[0])] = round(args[1], 1)


def _short(what: str) -> str:
    return " ".join(w for w in what.split() if not w.isdigit())


def floor(top: str) -> float:
    """The essential work alone: every archive file listed and read whole through the root's Python
    client (pyarrow; hdfs-native behind it on HDFS), in one process."""
    import pyarrow.fs as pafs
    from lesionspark.store import storage
    start = time.perf_counter()
    fs, path = storage.filesystem(f"{top}/raw")
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if info.type == pafs.FileType.File and info.path.endswith(".jpg"):
            with fs.open_input_stream(info.path) as fh:
                fh.read()
    return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=1000)
    args = ap.parse_args()
    from conftest import make_cfg, publish_untrained_model
    from lesionspark.core.progress import setup_logging
    from lesionspark.imaging.synth import synth
    from lesionspark.ingest.driver import ingest
    from lesionspark.score.driver import score
    from lesionspark.store import storage
    from lesionspark.store.spark import get_spark
    setup_logging("WARN")
    work = Path(tempfile.mkdtemp(prefix="lesionspark-roots-"))
    print("work folder", work, flush=True)
    raw = synth(str(work / "raw"), n_images=args.n_images, width=300, height=225, progress=False)
    n_files = sum(1 for p in (work / "raw").rglob("*.jpg"))
    publish_untrained_model(work / "registry", size=64)
    model = (work / "registry" / "models" / "cnn" / "v1").as_uri()
    dfs, namenode = start_minidfs(work / "minidfs")
    httpd, endpoint = start_s3()
    import boto3
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                          region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    for f in sorted((work / "raw").rglob("*")):  # s3a's copyFromLocalFile refuses a local folder tree
        if f.is_file():
            client.upload_file(str(f), "bench", f"raw/{f.relative_to(work / 'raw').as_posix()}")
    s3a = {"fs.s3a.endpoint": endpoint, "fs.s3a.path.style.access": "true", "fs.s3a.access.key": "k",
           "fs.s3a.secret.key": "s", "fs.s3a.endpoint.region": "us-east-1", "fs.s3a.connection.ssl.enabled": "false"}
    base = make_cfg(work / "local-root", **{"spark.conf": {**s3a, "spark.ui.showConsoleProgress": "false"}})
    spark = get_spark(base)
    roots = {"local": str(work), "hdfs": namenode, "s3a": "s3a://bench"}
    upload(spark, work / "raw", f"{namenode}/raw")
    results = {}
    steps = Steps()
    for name in ("lesionspark.score.driver", "lesionspark.ingest.driver"):
        logging.getLogger(name).addHandler(steps)
        logging.getLogger(name).setLevel(logging.INFO)
    for kind, top in [("warm-up", str(work / "warm")), *roots.items()]:  # the first run starts the workers
        if kind == "warm-up":
            top = str(work)
        images = [f"{top}/raw/images_generated", f"{top}/raw/images_genuine"]
        cfg = base.with_overrides({"storage.root": f"{top}/score-root", "score.archive": f"{top}/raw",
                                   "score.model": model, "archive.path_regex": r"\.jpe?g$"})
        if kind == "warm-up":
            cfg = cfg.with_overrides({"storage.root": str(work / "warm-root")})
        steps.seconds = {}
        t_score = timed(lambda: score(spark, cfg, run_id=f"{kind}-1"))
        score_steps = steps.seconds
        cfg = base.with_overrides({"storage.root": f"{top}/ingest-root", "ingest.metadata": f"{top}/raw/HAM10000_metadata.csv",
                                   "ingest.images": images, "dataset.image_size": 64})
        if kind == "warm-up":
            cfg = cfg.with_overrides({"storage.root": str(work / "warm-ingest-root")})
        steps.seconds = {}
        t_ingest = timed(lambda: ingest(spark, cfg, run_id=f"{kind}-1"))
        results[kind] = {"score_s": round(t_score, 1), "ingest_s": round(t_ingest, 1),
                         "floor_read_s": round(floor(top), 1), "score_steps": score_steps,
                         "ingest_steps": steps.seconds}
        print(kind, results[kind], flush=True)
    results.pop("warm-up")
    for kind in results:
        for stage in ("score_s", "ingest_s"):
            results[kind][stage.replace("_s", "_x_local")] = round(results["local"][stage] / results[kind][stage], 2)
    print(json.dumps({"files": n_files, "generated": raw["generated"], "results": results}, indent=2))
    dfs.stdin.close()
    dfs.wait(60)
    httpd.shutdown()
    storage.configure_s3({})
    os._exit(0)


if __name__ == "__main__":
    main()
