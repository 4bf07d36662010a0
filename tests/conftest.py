"""Shared fixtures: one local SparkSession and generated data made once per test session."""
from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import pytest

GENUINE = resources.files("lesionspark").joinpath("data/ham10000")

# Every JVM the tests start (the tests' Spark session, and each spark-submit or `lesionspark` subprocess's) lives
# for seconds to minutes: the C1 compiler alone and the serial collector spend less CPU on it than
# the server defaults, which pay off only on long jobs (docs/benchmarks.md, "The test suite").
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


# The longest test files first (measured: docs/benchmarks.md, "The test suite"). Two xdist workers take
# a file each (pyproject.toml: --dist loadfile); xdist queues files by their number of tests, which
# put the few long ones (a cluster, Horovod runs, the demo) last, leaving one worker alone at the end.
LONGEST_FIRST = ("test_hdfs.py", "test_train.py", "test_cluster.py", "test_s3a.py", "test_hdfs_stages.py",
                 "test_score.py", "test_quality.py", "test_pipeline.py", "test_poison.py", "test_evaluate.py",
                 "test_serve.py", "test_dicom.py", "test_dicom_results.py", "test_ingest.py", "test_security.py")


def _longest_first(scope: str) -> int:
    name = scope.replace("\\", "/").rsplit("/", 1)[-1]
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling
    if config.getoption("dist") != "loadfile" or not hasattr(LoadFileScheduling, "_assign_work_unit"):
        return None  # another --dist, or an xdist whose scheduler differs: xdist's own

    class LongestFirst(LoadFileScheduling):
        """xdist's file scheduling (pinned 3.6.1) with the queue in ``LONGEST_FIRST`` order."""

        def _assign_work_unit(self, node):
            for scope in sorted(self.workqueue, key=_longest_first):
                self.workqueue.move_to_end(scope)
            super()._assign_work_unit(node)
    return LongestFirst(config, log)


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession
    session = (SparkSession.builder.master("local[2]").appName("lesionspark-tests")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
               .config("spark.driver.memory", "2g")
               .config("spark.locality.wait", "0")  # as lesionspark's local sessions (store/spark.py)
               # The HDFS client's first wait before asking the NameNode again whether a closed file's
               # last block is complete (400 ms by default): a MiniDFSCluster's single DataNode reports
               # blocks after the first ask, so every file written waited that long.
               .config("spark.hadoop.dfs.client.block.write.locateFollowingBlock.initial.delay.ms", "10")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def genuine_dir() -> Path:
    return Path(str(GENUINE))


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """120 generated images following the genuine metadata, plus the 56 genuine JPEGs."""
    from lesionspark.imaging.synth import synth
    out = tmp_path_factory.mktemp("synth")
    return synth(str(out), n_images=120, seed=3, with_genuine=True, workers=2, progress=False)


def make_cfg(root, **keys):
    from lesionspark.core.config import Config
    cfg = Config.load(overrides=["spark.master=local[2]"])
    return cfg.with_overrides({"storage.root": str(root), **{k.replace("__", "."): v for k, v in keys.items()}})


def publish_untrained_model(root: Path, name="cnn", version="v1", size=32, **card_keys):
    """A real Keras CNN (random weights) with a complete model card, as train publishes it (with
    ``metadata=[...]`` in the card: the metadata input too)."""
    from lesionspark.store import storage
    from lesionspark.core.classes import CLASSES
    from lesionspark.dataset.clinical import width
    from lesionspark.modeling.models import build
    d = root / "models" / name / version
    d.mkdir(parents=True)
    classes = card_keys.pop("classes", list(CLASSES))
    model = build("cnn", size, len(classes), {"filters": [8, 16, 16], "dense": 16}, width(card_keys.get("metadata")))
    model.save(str(d / "model.keras"))
    card = {"name": name, "version": version, "architecture": "cnn", "classes": classes,
            "image_size": size, "resize": "squash", "preprocessing": "scale_0_1", **card_keys}
    storage.write_json(str(d / "model_card.json"), card)
    (root / "models" / name / "latest").write_text(version)
    return model, card


@pytest.fixture(scope="session")
def ingested_small(spark, synth_small, tmp_path_factory):
    """synth_small ingested at 32 px: (cfg, manifest, layout). Shared by balance and train tests."""
    from lesionspark.ingest.driver import ingest
    from lesionspark.store.layout import Layout
    root = tmp_path_factory.mktemp("small-root")
    cfg = make_cfg(root, ingest__metadata=synth_small["metadata"], ingest__images=synth_small["images"],
                   dataset__image_size=32)
    manifest = ingest(spark, cfg)
    return cfg, manifest, Layout(str(root))


MINIDFS = Path(sys.prefix) / "share" / "lesionspark" / "minidfs"


@pytest.fixture(scope="module")
def namenode(tmp_path_factory):
    """``hdfs://127.0.0.1:<port>`` of a real HDFS (Hadoop's MiniDFSCluster, requirements/jars.txt;
    the launcher is tests/minidfs/MiniDfs.java, built by the set-up command), for the module."""
    import subprocess
    import threading
    assert (MINIDFS / "classes" / "MiniDfs.class").exists(), "run scripts/setup.sh: it builds the HDFS launcher"
    jars = Path(__import__("pyspark").__file__).parent / "jars"
    cp = f"{MINIDFS / 'classes'}:{MINIDFS / 'hadoop-client-minicluster-3.3.4.jar'}:{jars}/*"
    proc = subprocess.Popen(["java", "-Xmx512m", "-cp", cp, "MiniDfs", str(tmp_path_factory.mktemp("minidfs")), "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready: list = []
    reader = threading.Thread(target=lambda: ready.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(120)
    assert ready and ready[0].startswith("READY "), f"MiniDFSCluster did not start: {ready}"
    yield ready[0].split()[1]
    proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
