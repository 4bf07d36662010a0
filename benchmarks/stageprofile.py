"""Profile one stage run: Spark's event log turned into a table of where the seconds went.

    .venv/bin/python benchmarks/stageprofile.py ingest --metadata M --images D1 D2 [--size 128]
    .venv/bin/python benchmarks/stageprofile.py score --archive A [--size 128] [--runs 2]

Starts local[2] with the event log on, runs the stage (score: on an untrained CNN published under
a fresh root; with ``--runs 2`` the second run is the quiet night over the same files), and prints,
per run, one row per step (its Spark jobs' wall time and summed task metrics) and the time spent
on the driver outside any job.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import eventlog  # noqa: E402
from common import publish  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["ingest", "score"])
    ap.add_argument("--metadata")
    ap.add_argument("--images", nargs="+")
    ap.add_argument("--archive")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.core.config import Config
    from lesionspark.core.progress import setup_logging
    from lesionspark.store.spark import get_spark
    setup_logging("INFO")
    work = Path(tempfile.mkdtemp(prefix="lesionspark-profile-"))
    events = work / "events"
    events.mkdir()
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                                 "spark.conf.spark.eventLog.enabled=true",
                                 f"spark.conf.spark.eventLog.dir=file://{events}",
                                 f"dataset.image_size={args.size}", *args.overrides]).with_overrides(
        {"storage.root": str(work / "root")})
    spark = get_spark(cfg)
    spark.range(4).count()  # JVM and a Python worker up before the clock starts
    for run in range(args.runs):
        since = int(time.time() * 1000)
        start = time.perf_counter()
        if args.stage == "ingest":
            from lesionspark.ingest.driver import ingest
            out = ingest(spark, cfg.with_overrides({"ingest.metadata": args.metadata, "ingest.images": args.images}))
            n = out["counts"]["written"] + out["counts"]["rejected"]
        else:
            from lesionspark.score.driver import score
            if run == 0:
                publish(work / "root", "cnn", args.size)
            out = score(spark, cfg.with_overrides({"score.archive": args.archive, "score.model": "cnn"}))
            n = out["listed"]
        wall = time.perf_counter() - start
        time.sleep(1)  # let the listener flush
        rows, _ = eventlog.parse(eventlog.latest_log(events), since)
        print(f"\n{args.stage} run {run + 1}: {n} inputs in {wall:.1f} s ({n / wall:.1f}/s)\n")
        print(eventlog.table(rows, wall))
    spark.stop()


if __name__ == "__main__":
    main()
