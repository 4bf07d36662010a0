"""Every stage on one ``hdfs://`` root of a real HDFS (Hadoop's MiniDFSCluster, the ``namenode``
fixture of conftest.py): the Python side served by hdfs-native (no libhdfs here, ``store/hdfs.py``),
Spark's JVM by Hadoop. A file of its own, so that xdist runs it beside tests/test_hdfs.py."""
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import make_cfg
from lesionspark.store import storage
from test_storage import names

pytestmark = pytest.mark.slow  # a NameNode's JVM and two Horovod ranks


def _upload(spark, namenode: str, local: Path, dest: str) -> str:
    """A file or folder copied in through Hadoop's Java client, as ``hdfs dfs -put`` would."""
    hfs = spark._jvm.org.apache.hadoop.fs
    jfs = hfs.Path(namenode).getFileSystem(spark._jsc.hadoopConfiguration())
    jfs.copyFromLocalFile(False, True, hfs.Path(str(local)), hfs.Path(f"{namenode}/{dest}"))
    return f"{namenode}/{dest}"


def test_every_stage_on_an_hdfs_root(spark, namenode, synth_small, genuine_dir, tmp_path):
    """Ingest from HDFS, balance, train (two Horovod ranks reading their Petastorm shards from HDFS,
    rank 0 checkpointing there), evaluate, explain, score (lease, staging, commit) and its quiet
    rerun, then SQL: every stage on one ``hdfs://`` root."""
    from lesionspark.explain.driver import explain
    from lesionspark.pipeline import pipeline
    from lesionspark.score.driver import score
    from lesionspark.sql.query import register
    src = Path(synth_small["out"])
    data = _upload(spark, namenode, src, "raw/ham")
    archive = tmp_path / "archive"
    (archive / "ward A").mkdir(parents=True)
    for p in sorted((genuine_dir / "images").glob("*.jpg"))[:8]:
        (archive / "ward A" / p.name).write_bytes(p.read_bytes())
    (archive / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    root = f"{namenode}/ls"
    cfg = make_cfg(root, dataset__image_size=32, ingest__metadata=f"{data}/HAM10000_metadata.csv",
                   ingest__images=[f"{data}/{Path(d).name}" for d in synth_small["images"]],
                   balance__method="smote", score__archive=_upload(spark, namenode, archive, "archive"),
                   train__num_proc=2, train__epochs=1, train__samples_per_epoch=128, train__warmup_epochs=0,
                   train__horovod_verbose=0, evaluate__bootstrap=0, evaluate__gradcam_examples=0)
    out = pipeline(spark, cfg)
    assert list(out) == ["ingest", "balance", "train", "evaluate", "score"]
    assert out["ingest"]["counts"]["written"] == synth_small["generated"] + synth_small["genuine"]
    assert out["train"]["workers"] == 2 and out["train"]["epochs_run"] == 1
    version = out["train"]["version"]
    fs, _ = storage.filesystem(namenode)
    card = storage.read_json(f"{root}/models/cnn/{version}/model_card.json")
    assert card["balance"] == "smote" and {r["rank"] for r in card["ranks"]} == {0, 1}
    (run,) = names(f"{root}/runs")
    assert {"checkpoint-weights.h5", "best_weights.h5", "state.json"} <= set(names(f"{root}/runs/{run}"))  # rank 0's
    assert out["evaluate"]["model_version"] == version
    first = out["score"]
    assert (first["listed"], first["scored"], first["rejected"]) == (9, 8, 1)
    model = f"cnn:{version}"
    again = score(spark, cfg.with_overrides({"score.model": model}), run_id="again")
    assert (again["listed"], again["scored"], again["read"]) == (9, 0, 0)  # a quiet rerun reads nothing
    shown = explain(spark, cfg.with_overrides({"explain.model": model, "explain.limit": 6}))
    assert shown["explained"] + shown["rejected"] == 6 and shown["table"].startswith(root)
    preds = pq.read_table("/ls/tables/predictions", filesystem=fs).to_pandas()
    assert len(preds) == 8 and preds["image_path"].str.contains("ward A").all()
    assert names(f"{root}/tables/_staging") == []  # both runs committed and cleaned their staging
    register(spark, root)
    row = spark.sql("SELECT count(DISTINCT image_sha256) AS n, min(model_version) AS v FROM predictions").collect()[0]
    assert (row.n, row.v) == (8, version)
