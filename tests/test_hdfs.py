"""A real HDFS: Hadoop's MiniDFSCluster (a NameNode and a DataNode in one JVM, requirements/jars.txt;
the launcher is tests/minidfs/MiniDfs.java, built by the set-up command). The storage contract the
stand-in ``hdfslike`` imitates (tests/test_storage.py) is held here on the real NameNode: files
replaced and listed, a directory published whole, a publish killed between any two operations,
contenders racing for the lease. Then a scoring run end to end on an ``hdfs://`` root, with the
Python side served by hdfs-native (no libhdfs here, ``store/hdfs.py``) and Spark's JVM by Hadoop."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import strictfs
from conftest import make_cfg, publish_untrained_model
from lesionspark.store import hdfs, publishing, storage
from test_storage import files, names

pytestmark = pytest.mark.slow  # a NameNode's JVM for the module
MINIDFS = Path(sys.prefix) / "share" / "lesionspark" / "minidfs"
SPARK_JARS = Path(__import__("pyspark").__file__).parent / "jars"


@pytest.fixture(scope="module")
def namenode(tmp_path_factory):
    """``hdfs://127.0.0.1:<port>`` of a MiniDFSCluster that lives for the module."""
    assert (MINIDFS / "classes" / "MiniDfs.class").exists(), "run scripts/setup.sh: it builds the HDFS launcher"
    cp = f"{MINIDFS / 'classes'}:{MINIDFS / 'hadoop-client-minicluster-3.3.4.jar'}:{SPARK_JARS}/*"
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


def test_the_python_side_uses_hdfs_native_where_libhdfs_does_not_load(namenode):
    assert hdfs.client() == "native"
    fs, path = storage.filesystem(f"{namenode}/probe/a.bin")
    assert path == "/probe/a.bin" and fs.type_name == "py::fsspec+hdfs"


def test_files_are_replaced_listed_and_published_whole_on_the_namenode(spark, namenode):
    d = f"{namenode}/contract"
    for i in range(3):
        storage.replace_file(f"{d}/latest", f"v{i}".encode())  # the driver: Hadoop's rename2 through the JVM
    assert files(d) == {"latest": "v2"}
    fs, path = storage.filesystem(d)
    info = fs.get_file_info(f"{path}/latest")
    assert info.size == 2 and abs(info.mtime.timestamp() - time.time()) < 300  # the listing's mtime, as score needs it
    out = f"{d}/out"
    for version in ("v1", "v2"):
        publish = publishing.AtomicDir(out, f"2026-{version}")
        with publish as staging:
            for i in range(3):
                storage.write_bytes(f"{staging}/part-{i}", version.encode())
        assert publishing.resolve(out) == publish.published == out  # directories move: no record
    assert files(out) == {f"part-{i}": "v2" for i in range(3)}
    assert names(d) == ["latest", "out"]  # no staging or old folder left


PUBLISH = """
import sys
sys.path.insert(0, {here!r})
import strictfs
strictfs.register_crashing({namenode!r})
from lesionspark.store import publishing, storage
with publishing.AtomicDir(sys.argv[1], sys.argv[2]) as staging:
    for i in range(4):
        storage.write_bytes(f"{{staging}}/part-{{i}}", sys.argv[2].encode())
"""


def _publish_real(namenode: str, out: str, version: str, crash_at: int | None = None) -> int:
    import os
    env = {**os.environ, **({"LESIONSPARK_CRASH_AT": str(crash_at)} if crash_at else {})}
    script = PUBLISH.format(here=str(Path(__file__).parent), namenode=namenode)
    return subprocess.run([sys.executable, "-c", script, out, version], env=env, timeout=120).returncode


def test_a_publish_killed_between_any_two_operations_leaves_the_old_or_the_new(namenode):
    """Every operation of a publish on the NameNode is a crash point (``strictfs.Crashing`` counts
    them on the real filesystem); after each, the next run's start recovers the old output or the
    new one, whole."""
    strictfs.register_crashing(namenode)
    out, real = "hdfscrash:///killed/out", f"{namenode}/killed/out"
    assert _publish_real(namenode, out, "2026-a") == 0
    old = files(real)
    for k in range(1, 30):
        code = _publish_real(namenode, out, "2026-b", crash_at=k)
        publishing.AtomicDir(out, "2026-recover")._cleanup_leftovers()  # what the next run does first
        now = files(real)
        assert now in (old, {f"part-{i}": "2026-b" for i in range(4)}), (k, now)
        if code == 0:
            break
        assert code == 77
        assert _publish_real(namenode, out, "2026-a") == 0
    assert k == 8 and names(f"{namenode}/killed") == ["out"]  # the same 8 steps as the stand-in


def test_contenders_racing_for_a_lease_on_the_namenode_get_exactly_one_holder(spark, namenode):
    for trial in range(10):
        results = strictfs.race(f"{namenode}/leases/lease-{trial}", 6)
        assert [r for r in results if r[0] == "held"] == [("held", 1)], (trial, results)
        assert sorted(r[0] for r in results) == ["held"] + ["refused"] * 5, results


def test_a_scoring_run_on_an_hdfs_root_commits_once_and_a_rerun_adds_nothing(spark, namenode, genuine_dir, tmp_path):
    from lesionspark.score.driver import score
    from lesionspark.sql.query import register
    # The archive arrives through Hadoop's Java client, as a PACS export to HDFS would. (Written
    # through hdfs-native first, the MiniDFSCluster's DataNode then refused the Java client's writes:
    # "Unexpected EOF while trying to read response", docs/cluster.md.)
    hfs = spark._jvm.org.apache.hadoop.fs
    jfs = hfs.Path(namenode).getFileSystem(spark._jsc.hadoopConfiguration())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    for p in [*sorted((genuine_dir / "images").glob("*.jpg"))[:8], tmp_path / "broken.jpg"]:
        folder = "archive" if p.name == "broken.jpg" else "archive/ward A"
        jfs.copyFromLocalFile(False, True, hfs.Path(str(p)), hfs.Path(f"{namenode}/{folder}/{p.name}"))
    fs, _ = storage.filesystem(namenode)
    publish_untrained_model(tmp_path / "registry")
    cfg = make_cfg(f"{namenode}/ls", score__archive=f"{namenode}/archive",
                   score__model=(tmp_path / "registry" / "models" / "cnn" / "v1").as_uri())
    first = score(spark, cfg, run_id="h1")
    assert (first["listed"], first["scored"], first["rejected"]) == (9, 8, 1)
    again = score(spark, cfg, run_id="h2")
    assert (again["listed"], again["scored"], again["read"]) == (9, 0, 0)  # a quiet rerun reads nothing
    preds = pq.read_table("/ls/tables/predictions", filesystem=fs).to_pandas()
    assert len(preds) == 8 and set(preds["run_id"]) == {"h1"}
    assert names(f"{namenode}/ls/tables") == ["_lease", "_staging", "predictions", "score_files", "score_rejects",
                                              "score_runs"]
    assert names(f"{namenode}/ls/tables/_staging") == []  # both runs committed and cleaned their staging
    register(spark, f"{namenode}/ls")
    assert spark.sql("SELECT count(DISTINCT image_sha256) AS n FROM predictions").collect()[0].n == 8
