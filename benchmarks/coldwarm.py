"""The cost of a session's first run: ingest twice in one Spark session, on the same files.

    .venv/bin/python benchmarks/coldwarm.py --data /tmp/lsq/raw [--size 128] [overrides...]
    .venv/bin/python benchmarks/coldwarm.py --data /tmp/lsq/raw spark.conf.spark.sql.codegen.wholeStage=false

The Python workers are started first by a trivial ``mapInPandas`` job (as the benchmarks' floors
leave them), so the first ingest pays only the first use of each of its query shapes; the second
pays none. ``--data``: a `lesionspark synth` output folder (metadata CSV + ``images_*`` folders).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.core.config import Config
    from lesionspark.ingest.driver import ingest
    from lesionspark.core.progress import setup_logging
    from lesionspark.store.spark import get_spark
    setup_logging("INFO")  # each step's seconds, as the CLI logs them
    data, work = Path(args.data), Path(tempfile.mkdtemp(prefix="lesionspark-coldwarm-"))
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                                 f"dataset.image_size={args.size}", *args.overrides]).with_overrides({
        "storage.root": str(work / "root"), "ingest.metadata": str(data / "HAM10000_metadata.csv"),
        "ingest.images": [str(p) for p in sorted(data.glob("images_*"))]})
    spark = get_spark(cfg)
    spark.range(1000, numPartitions=2).mapInPandas(lambda it: it, "id long").count()  # Python workers up
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        ingest(spark, cfg)
        seconds.append(time.perf_counter() - start)
    print(f"ingest {args.overrides or 'defaults'}: first run {seconds[0]:.1f} s, second run {seconds[1]:.1f} s")


if __name__ == "__main__":
    main()
