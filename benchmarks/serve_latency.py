"""Latency of the morning queries (docs/operations.md) through the SQL endpoint (``lesionspark
serve``, over PyHive) against the same queries in ``lesionspark sql`` (``run_query`` in a warm
session: it registers the tables, then runs the query, as each ``lesionspark sql`` call does), over
10^5 and 10^6 prediction rows, with and without a scoring run committing on the same root.

    .venv/bin/python benchmarks/serve_latency.py --rows 100000 1000000 --repeats 7

The rows: 6 genuine images scored for real by an untrained CNN, then their prediction rows copied
(new content hashes, 30 nightly runs, 2% flagged for review) up to the row count: GENERATED rows in
the real table schema. The concurrent writer is a separate process scoring 20 freshly generated
JPEGs per run, one run after another, each committing into the same tables. Everything shares the
machine's cores: the server's JVM, this process's session and the writer's.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

WRITER = """
import io, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
sys.path[:0] = [{repo!r}, {tests!r}]
from conftest import make_cfg
from pyspark.sql import SparkSession
from lesionspark.score.driver import score
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
rng = np.random.default_rng(0)
for i in range(10**6):
    folder = Path({work!r}) / f"night-{{i}}"
    folder.mkdir(parents=True)
    for k in range(20):
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"{{k}}.jpg")
    out = score(spark, make_cfg({root!r}, score__archive=str(folder), score__model="cnn:v1"), run_id=f"writer-{{i}}")
    print("committed", out["scored"], flush=True)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def build_root(spark, root: Path, rows: int, genuine: Path) -> None:
    from pyspark.sql import functions as F
    from conftest import make_cfg, publish_untrained_model
    from lesionspark.score.driver import score
    from lesionspark.store.layout import Layout
    archive = root.parent / f"archive-{rows}"
    archive.mkdir(parents=True)
    for p in sorted(genuine.glob("*.jpg"))[:6]:
        (archive / p.name).write_bytes(p.read_bytes())
    publish_untrained_model(root)
    score(spark, make_cfg(root, score__archive=str(archive), score__model="cnn:v1"), run_id="real")
    table = Layout(str(root)).table("predictions")
    real = spark.read.parquet(table)
    n = spark.range(rows).withColumnRenamed("id", "k")
    day = (F.col("k") % 30).cast("int")
    bulk = (n.crossJoin(real.limit(1).drop("scored_date", "run_id"))
            .withColumn("image_sha256", F.sha2(F.concat(F.lit("bulk-"), F.col("k").cast("string")), 256))
            .withColumn("image_path", F.concat(F.lit("/archive/bulk/"), F.col("k").cast("string"), F.lit(".jpg")))
            .withColumn("malignant_probability", F.rand(1))
            .withColumn("review_flag", F.rand(2) < 0.02)
            .withColumn("scored_date", F.date_format(F.date_sub(F.current_date(), day), "yyyy-MM-dd"))
            .withColumn("run_id", F.concat(F.lit("bulk-"), day.cast("string"))).drop("k"))
    bulk.select(*real.columns).repartition(30, "run_id").write.partitionBy("scored_date", "run_id") \
        .mode("append").parquet(table)


def start_server(root: Path, port: int, log: Path):
    import yaml
    conf = root.parent / f"serve-{port}.yaml"
    conf.write_text(yaml.safe_dump({"storage": {"root": str(root)}, "serve": {"port": port, "refresh_s": 2},
                                    "spark": {"master": "local[2]", "conf": {"spark.ui.enabled": "false"}}}))
    proc = subprocess.Popen([sys.executable, "-m", "lesionspark.cli", "serve", "--conf", str(conf)],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
                            env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    for line in proc.stdout:
        if line.startswith("SERVING"):
            return proc
    raise RuntimeError(f"the server did not start: {log}")


def measure(run, queries: list[str], repeats: int) -> dict:
    """Seconds per query: run each query once to warm, then ``repeats`` times, round-robin."""
    for q in queries:
        run(q)
    times: dict[int, list[float]] = {i: [] for i in range(len(queries))}
    for _ in range(repeats):
        for i, q in enumerate(queries):
            start = time.perf_counter()
            run(q)
            times[i].append(time.perf_counter() - start)
    return {i: {"median": round(statistics.median(t), 3), "p95": round(percentile(t, 0.95), 3)} for i, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    from pyhive import hive
    from doctext import morning_queries
    from lesionspark.core.progress import setup_logging
    from lesionspark.sql.query import run_query
    from pyspark.sql import SparkSession
    setup_logging("WARN")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false") \
        .config("spark.sql.shuffle.partitions", "4").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    queries = morning_queries()
    work = Path(tempfile.mkdtemp(prefix="lesionspark-serve-bench-"))
    results = {}
    for rows in args.rows:
        root = work / f"root-{rows}"
        build_root(spark, root, rows, REPO / "lesionspark" / "data" / "ham10000" / "images")
        port = 10300 + len(results)
        server = start_server(root, port, work / f"serve-{rows}.log")
        cursor = hive.connect(host="127.0.0.1", port=port, auth="NONE", username="bench").cursor()

        def jdbc(q):
            cursor.execute(q)
            return cursor.fetchall()

        def local(q):
            return run_query(spark, str(root), q, limit=100_000)
        entry = {"jdbc": measure(jdbc, queries, args.repeats), "sql": measure(local, queries, args.repeats)}
        writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), tests=str(REPO / "tests"),
                                                                       work=str(work / f"writer-{rows}"), root=str(root))],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert writer.stdout.readline().startswith("committed")  # the writer is committing run after run
        entry["jdbc_committing"] = measure(jdbc, queries, args.repeats)
        entry["sql_committing"] = measure(local, queries, args.repeats)
        writer.send_signal(signal.SIGTERM)
        writer.wait(60)
        entry["writer_runs"] = sum(1 for p in (root / "tables" / "score_runs").glob("run_id=writer-*"))
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        results[rows] = entry
        print(rows, json.dumps(entry), flush=True)
    print(json.dumps({"queries": queries, "results": results}, indent=2))
    spark.stop()


if __name__ == "__main__":
    main()
