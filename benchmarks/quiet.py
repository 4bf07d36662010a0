"""The quiet night: score an archive of 8,000 files (4 hard-linked copies of a synth folder's
GENERATED JPEGs) once, then time N reruns that find nothing new, in one Spark session. To compare
another checkout, run this file with that checkout first on ``PYTHONPATH`` (and ``PYSPARK_PYTHON``
a wrapper that sets it).

    .venv/bin/python benchmarks/quiet.py 3 [--data /tmp/scratch/synth2000]
"""
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402
from lesionspark.core.config import Config  # noqa: E402
from lesionspark.store.spark import get_spark  # noqa: E402
from lesionspark.score.driver import score  # noqa: E402
data = sys.argv[sys.argv.index("--data") + 1] if "--data" in sys.argv else "/tmp/scratch/synth2000"
src = sorted(Path(data, "images_generated").glob("*.jpg"))
work = Path(tempfile.mkdtemp(prefix="quiet-"))
arch = work / "archive"
for k in range(4):
    d = arch / f"d{k}"
    d.mkdir(parents=True)
    for p in src:
        os.link(p, d / p.name)
root = work / "root"
publish(root, "cnn", 64)
cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                             f"storage.root={root}", f"score.archive={arch}", "score.model=cnn:bench"])
spark = get_spark(cfg)
score(spark, cfg)
times = []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    s = score(spark, cfg)
    times.append(round(time.perf_counter() - t, 2))
    assert s["scored"] == 0
print(json.dumps({"files": s["listed"], "quiet_s": times}), flush=True)
shutil.rmtree(work)
